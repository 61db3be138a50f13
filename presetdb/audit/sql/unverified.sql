-- title: Unverified presets
-- purpose: Active presets imported for a kernel that no registered module provided (a
--   vLLM tree's own kernels): their config syntax was checked, nothing compiled them.
--   They are served only where the kernel is registered and the config passes at first
--   use; `presetdb verify --module MODULE` checks them and marks them verified or
--   quarantined. One row per kernel x platform, most unverified first.
-- params: none
-- columns:
--   kernel: kernel name
--   platform: canonical platform name
--   unverified: active presets not yet verified
--   active_presets: all active presets of the pair
--   source_paths: the files they were imported from (comma-separated)
--   source_revs: the source repository commits given at import (comma-separated)
-- highlight: {kernel} on {platform}: {unverified} of {active_presets} unverified
SELECT kernel,
       platform,
       SUM(verified = 0) AS unverified,
       COUNT(*) AS active_presets,
       GROUP_CONCAT(DISTINCT source_path) AS source_paths,
       GROUP_CONCAT(DISTINCT source_rev) AS source_revs
FROM v_active_presets
GROUP BY kernel, platform
HAVING SUM(verified = 0) > 0
ORDER BY unverified DESC, kernel, platform
