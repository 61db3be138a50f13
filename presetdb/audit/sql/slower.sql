-- title: Presets slower than the default config or PyTorch
-- purpose: Active presets whose stored config ran slower than Helion's default config
--   or than the PyTorch reference on the tuning machine. Such a preset costs time:
--   retune it, or drop it so the default (or PyTorch) serves the key. Worst first.
-- params: none
-- columns:
--   preset_id: presets.id
--   kernel: kernel name
--   platform: canonical platform name
--   shape_key: canonical shape key
--   latency_ms: the stored config, median ms
--   default_ms: Helion's default config, median ms
--   reference_ms: the PyTorch reference, median ms
--   vs_default: latency_ms / default_ms (above 1 = slower than the default)
--   vs_reference: latency_ms / reference_ms (above 1 = slower than PyTorch)
--   slower_than: "default", "reference" or "default+reference"
-- highlight: {kernel} on {platform} {shape_key}: {vs_default}x default, {vs_reference}x PyTorch
SELECT preset_id, kernel, platform, shape_key, latency_ms, default_ms, reference_ms,
       ROUND(latency_ms / default_ms, 3) AS vs_default,
       ROUND(latency_ms / reference_ms, 3) AS vs_reference,
       ltrim(
           CASE WHEN latency_ms > default_ms THEN '+default' ELSE '' END ||
           CASE WHEN latency_ms > reference_ms THEN '+reference' ELSE '' END,
           '+') AS slower_than
FROM v_active_presets
WHERE latency_ms > default_ms OR latency_ms > reference_ms
ORDER BY MAX(COALESCE(latency_ms / default_ms, 0), COALESCE(latency_ms / reference_ms, 0)) DESC,
         preset_id
