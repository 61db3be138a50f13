-- title: Most-wanted shapes (miss ledger)
-- purpose: Calls that no stored config served, most frequent first: what the next
--   tuning run should target. The ledger lives in the user overlay db; point --db there.
-- params: none
-- columns:
--   kernel: kernel name as called
--   platform: platform the call ran on
--   features: canonical shape key of the call
--   reason: why it missed (no-match, quarantined, ...)
--   count: calls recorded
--   first_seen_at: first miss (UTC)
--   last_seen_at: latest miss (UTC)
--   covered_now: 1 when this db now has an active preset for exactly this key
-- highlight: {kernel} on {platform} {features}: {count} call(s), {reason}
SELECT m.kernel, m.platform, m.features, m.reason, m.count, m.first_seen_at, m.last_seen_at,
       EXISTS (
           SELECT 1 FROM v_active_presets a
           WHERE a.kernel = m.kernel AND a.platform = m.platform AND a.shape_key = m.features
       ) AS covered_now
FROM preset_misses m
ORDER BY m.count DESC, m.last_seen_at DESC, m.id
