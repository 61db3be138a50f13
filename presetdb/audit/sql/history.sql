-- title: History of a key
-- purpose: Every row ever stored for one (kernel, platform, shape key): active,
--   superseded and quarantined, oldest first. An empty parameter matches everything.
--   Give shape_key in canonical form (sorted keys, no spaces); `presetdb audit
--   history` canonicalises it for you.
-- params:
--   kernel: kernel name, e.g. rms_norm
--   platform: canonical platform name, e.g. nvidia_h100
--   shape_key: shape key JSON, e.g. {"dtype":"bfloat16","hidden":4096}
-- columns:
--   preset_id: presets.id
--   kernel: kernel name
--   platform: canonical platform name
--   shape_key: canonical shape key
--   status: active, superseded or quarantined
--   status_reason: why superseded or quarantined
--   superseded_by: preset_id of the successor
--   config_sha256: sha256 of the config
--   latency_ms: the stored config, median ms
--   source: how the row entered the db
--   revision: migration that imported it
--   created_at: when the row was written (UTC)
-- highlight: {kernel} on {platform} {shape_key}: preset {preset_id} {status}
SELECT preset_id, kernel, platform, shape_key, status, status_reason, superseded_by,
       config_sha256, latency_ms, source, revision, created_at
FROM v_preset_history
WHERE (NULLIF(:kernel, '') IS NULL OR kernel = :kernel)
  AND (NULLIF(:platform, '') IS NULL OR platform = :platform)
  AND (NULLIF(:shape_key, '') IS NULL OR shape_key = :shape_key)
ORDER BY kernel, platform, shape_key, preset_id
