-- title: Coverage: kernels x platforms
-- purpose: Every kernel against every platform that holds any preset: how many keys
--   are active and whether the kernel's default entry (shape key {}) is among them.
--   Gaps (no default, fewest presets) come first.
-- params: none
-- columns:
--   kernel: kernel name
--   platform: canonical platform name
--   active_presets: active presets for the pair (0 = nothing tuned there)
--   has_default: 1 when the default entry {} is active, else 0
--   quarantined: rows quarantined for the pair
--   superseded: older rows kept as history for the pair
-- highlight: {kernel} on {platform}: {active_presets} active, has_default={has_default}
SELECT k.name AS kernel,
       pl.name AS platform,
       COALESCE(SUM(p.status = 'active'), 0) AS active_presets,
       COALESCE(MAX(p.status = 'active' AND p.shape_key = '{}'), 0) AS has_default,
       COALESCE(SUM(p.status = 'quarantined'), 0) AS quarantined,
       COALESCE(SUM(p.status = 'superseded'), 0) AS superseded
FROM kernels k
CROSS JOIN platforms pl
LEFT JOIN presets p ON p.kernel_id = k.id AND p.platform_id = pl.id
WHERE pl.id IN (SELECT platform_id FROM presets)
GROUP BY k.id, pl.id
ORDER BY has_default, active_presets, kernel, platform
