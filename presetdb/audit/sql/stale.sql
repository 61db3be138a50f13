-- title: Stale presets
-- purpose: Active presets tuned with a helion, triton or torch version other than the
--   running one, or whose kernel source hash differs from the registered kernel's.
--   Versions compare without the local part (2.11.0+cu128 = 2.11.0). An empty
--   parameter skips that comparison; `presetdb audit stale` fills the versions from the
--   installed packages and, with --check-source, the hashes from presetdb.kernels.
-- params:
--   helion_version: running helion version, e.g. 1.5.0
--   triton_version: running triton version, e.g. 3.6.0
--   torch_version: running torch version, e.g. 2.11.0
--   source_hashes: JSON object {"kernel": "sha256 of its current source"}
-- columns:
--   preset_id: presets.id
--   kernel: kernel name
--   platform: canonical platform name
--   shape_key: canonical shape key
--   reason: what differs, e.g. "helion 1.4.0 != 1.5.0"
--   helion_version: helion the preset was tuned with
--   triton_version: triton the preset was tuned with
--   torch_version: torch the preset was tuned with
--   kernel_source_hash: kernel source hash stored with the preset
--   tuned_at: when the tuning run finished (UTC)
-- highlight: {kernel} on {platform} {shape_key}: {reason}
WITH running AS (
    SELECT NULLIF(substr(:helion_version, 1, instr(:helion_version || '+', '+') - 1), '') AS helion,
           NULLIF(substr(:triton_version, 1, instr(:triton_version || '+', '+') - 1), '') AS triton,
           NULLIF(substr(:torch_version, 1, instr(:torch_version || '+', '+') - 1), '') AS torch,
           CASE WHEN json_valid(:source_hashes) THEN :source_hashes ELSE '{}' END AS hashes
),
tuned AS (
    SELECT v.*,
           substr(v.helion_version, 1, instr(v.helion_version || '+', '+') - 1) AS helion,
           substr(v.triton_version, 1, instr(v.triton_version || '+', '+') - 1) AS triton,
           substr(v.torch_version, 1, instr(v.torch_version || '+', '+') - 1) AS torch,
           (SELECT h.value FROM running r, json_each(r.hashes) h WHERE h.key = v.kernel)
               AS current_hash
    FROM v_active_presets v
),
checked AS (
    SELECT t.*,
           ltrim(
               CASE WHEN t.helion <> r.helion
                    THEN '; helion ' || t.helion || ' != ' || r.helion ELSE '' END ||
               CASE WHEN t.triton <> r.triton
                    THEN '; triton ' || t.triton || ' != ' || r.triton ELSE '' END ||
               CASE WHEN t.torch <> r.torch
                    THEN '; torch ' || t.torch || ' != ' || r.torch ELSE '' END ||
               CASE WHEN t.kernel_source_hash <> t.current_hash
                    THEN '; kernel source changed' ELSE '' END,
               '; ') AS reason
    FROM tuned t, running r
)
SELECT preset_id, kernel, platform, shape_key, reason, helion_version, triton_version,
       torch_version, kernel_source_hash, tuned_at
FROM checked
WHERE reason <> ''
ORDER BY kernel, platform, shape_key
