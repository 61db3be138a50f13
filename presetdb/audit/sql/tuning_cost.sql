-- title: Tuning cost
-- purpose: Search time spent per kernel x platform, history included (that time was
--   spent too): where the GPU hours went.
-- params: none
-- columns:
--   kernel: kernel name
--   platform: canonical platform name
--   presets: preset rows of any status
--   runs: tuning runs that wrote them
--   configs_tried: configs the searches compiled
--   tuning_seconds: wall time of the searches
--   tuning_hours: the same in hours
--   seconds_per_preset: tuning_seconds / rows with a recorded time
-- highlight: {kernel} on {platform}: {tuning_hours} h over {presets} preset(s)
SELECT k.name AS kernel,
       pl.name AS platform,
       COUNT(*) AS presets,
       COUNT(DISTINCT p.run_id) AS runs,
       SUM(p.configs_tried) AS configs_tried,
       ROUND(SUM(p.tuning_seconds), 1) AS tuning_seconds,
       ROUND(SUM(p.tuning_seconds) / 3600.0, 3) AS tuning_hours,
       ROUND(AVG(p.tuning_seconds), 1) AS seconds_per_preset
FROM presets p
JOIN kernels k ON k.id = p.kernel_id
JOIN platforms pl ON pl.id = p.platform_id
GROUP BY k.id, pl.id
ORDER BY COALESCE(SUM(p.tuning_seconds), 0) DESC, kernel, platform
