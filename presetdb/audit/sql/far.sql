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
--   served_key: the stored key that matched, with its platform when it is another one
--   match: nearest, ceil or floor
--   far_fields: per field beyond its limit, [log2 distance, limit]
--   count: calls counted
--   last_seen_at: latest flush that counted a call (UTC)
--   covered_now: 1 when this db now has an active preset for exactly the requested key
-- highlight: {kernel} on {platform} {requested_key}: {count} call(s) matched {served_key}, {far_fields} away
SELECT n.kernel, n.platform, n.requested_key,
       CASE WHEN n.served_platform = n.platform THEN n.served_key
            ELSE n.served_platform || ':' || n.served_key END AS served_key,
       n.match, n.far_fields, n.count, n.last_seen_at,
       EXISTS (
           SELECT 1 FROM v_active_presets a
           WHERE a.kernel = n.kernel AND a.platform = n.platform AND a.shape_key = n.requested_key
       ) AS covered_now
FROM preset_near_misses n
WHERE n.far
ORDER BY n.count DESC, n.distance DESC, n.id
