-- title: Missing provenance
-- purpose: Active presets that lack part of what a reader needs to trust them: the
--   device, the helion/triton/torch versions, the kernel source hash, or a timing.
--   Imports from formats that carry no provenance (vLLM json) land here.
-- params: none
-- columns:
--   preset_id: presets.id
--   kernel: kernel name
--   platform: canonical platform name
--   shape_key: canonical shape key
--   source: how the row entered the db (tune, import-vllm, ...)
--   source_file: file the row came from
--   missing_count: how many of the checked fields are NULL
--   missing: the NULL fields, comma separated
-- highlight: {kernel} on {platform} {shape_key} ({source}): missing {missing}
WITH checked AS (
    SELECT v.*,
           rtrim(
               CASE WHEN device_name IS NULL THEN 'device_name,' ELSE '' END ||
               CASE WHEN helion_version IS NULL THEN 'helion_version,' ELSE '' END ||
               CASE WHEN triton_version IS NULL THEN 'triton_version,' ELSE '' END ||
               CASE WHEN torch_version IS NULL THEN 'torch_version,' ELSE '' END ||
               CASE WHEN kernel_source_hash IS NULL THEN 'kernel_source_hash,' ELSE '' END ||
               CASE WHEN latency_ms IS NULL THEN 'latency_ms,' ELSE '' END ||
               CASE WHEN default_ms IS NULL THEN 'default_ms,' ELSE '' END ||
               CASE WHEN reference_ms IS NULL THEN 'reference_ms,' ELSE '' END,
               ',') AS missing
    FROM v_active_presets v
)
SELECT preset_id, kernel, platform, shape_key, source, source_file,
       length(missing) - length(replace(missing, ',', '')) + 1 AS missing_count, missing
FROM checked
WHERE missing <> ''
ORDER BY missing_count DESC, kernel, platform, shape_key
