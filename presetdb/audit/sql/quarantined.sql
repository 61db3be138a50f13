-- title: Quarantined presets
-- purpose: Rows that failed validation or compilation and no longer serve calls, with
--   the reason and whether the key has an active row again.
-- params: none
-- columns:
--   preset_id: presets.id
--   kernel: kernel name
--   platform: canonical platform name
--   shape_key: canonical shape key
--   config_sha256: sha256 of the quarantined config
--   status_reason: why it was quarantined
--   source: how the row entered the db
--   created_at: when the row was written (UTC)
--   has_active: 1 when the key has an active row now, else 0
-- highlight: {kernel} on {platform} {shape_key}: {status_reason}
SELECT h.preset_id, h.kernel, h.platform, h.shape_key, h.config_sha256, h.status_reason,
       h.source, h.created_at,
       EXISTS (
           SELECT 1 FROM v_active_presets a
           WHERE a.kernel = h.kernel AND a.platform = h.platform AND a.shape_key = h.shape_key
       ) AS has_active
FROM v_preset_history h
WHERE h.status = 'quarantined'
ORDER BY h.created_at DESC, h.preset_id DESC
