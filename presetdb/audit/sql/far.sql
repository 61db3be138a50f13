-- title: Calls served far away (near-miss ledger)
-- purpose: Calls whose nearest stored key is beyond the far-match guard (a field more than
--   its maximum log2 distance away, PRESETDB_MAX_DISTANCE): what PRESETDB_ON_FAR gave them
--   was Helion's default config, the far config or a re-ranked one, never a config tuned
--   for their shape. The ledger lives in the user overlay db; point --db there. Tune or
--   refine these keys (presetdb queue ranks them; refine/tune --from-queue take them).
--   Most calls first.
-- params: none
-- columns:
--   kernel: kernel name as called
--   platform: platform the call ran on
--   requested_key: canonical shape key of the call
--   served_key: the stored key that matched ({} = the kernel's default entry)
--   served_platform: platform whose preset matched
--   match: nearest, ceil, floor, default or exact (another platform's)
--   distance: summed log2 distance between the two keys
--   far_fields: per field beyond its limit, [distance, limit]
--   count: calls counted
--   first_seen_at: first call (UTC)
--   last_seen_at: latest flush that counted a call (UTC)
--   covered_now: 1 when this db now has an active preset for exactly the requested key
-- highlight: {kernel} on {platform} {requested_key}: {count} call(s) matched {served_key}, {far_fields} away
SELECT n.kernel, n.platform, n.requested_key, n.served_key, n.served_platform, n.match,
       ROUND(n.distance, 3) AS distance, n.far_fields, n.count, n.first_seen_at, n.last_seen_at,
       EXISTS (
           SELECT 1 FROM v_active_presets a
           WHERE a.kernel = n.kernel AND a.platform = n.platform AND a.shape_key = n.requested_key
       ) AS covered_now
FROM preset_near_misses n
WHERE n.far
ORDER BY n.count DESC, n.distance DESC, n.id
