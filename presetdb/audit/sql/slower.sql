-- title: Presets slower than the default config or PyTorch
-- purpose: Active presets whose stored config ran slower than Helion's default config
--   or than the PyTorch reference, all three timed by the same run with the same method
--   (benchmark_method: an L2-flush do_bench, a CUDA-graph replay, ...), so the ratios
--   compare like with like. Such a preset costs time on every call: refine or retune it
--   (presetdb refine / tune), or drop it so the default (or PyTorch) serves the key. Worst first.
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
--   benchmark_method: how the tuning run timed all three (tuning_runs.benchmark_method)
-- highlight: {kernel} on {platform} {shape_key}: {vs_default}x default, {vs_reference}x PyTorch
SELECT v.preset_id, v.kernel, v.platform, v.shape_key, v.latency_ms, v.default_ms, v.reference_ms,
       ROUND(v.latency_ms / v.default_ms, 3) AS vs_default,
       ROUND(v.latency_ms / v.reference_ms, 3) AS vs_reference,
       ltrim(
           CASE WHEN v.latency_ms > v.default_ms THEN '+default' ELSE '' END ||
           CASE WHEN v.latency_ms > v.reference_ms THEN '+reference' ELSE '' END,
           '+') AS slower_than,
       r.benchmark_method
FROM v_active_presets v
JOIN presets p ON p.id = v.preset_id
JOIN tuning_runs r ON r.id = p.run_id
WHERE v.latency_ms > v.default_ms OR v.latency_ms > v.reference_ms
ORDER BY MAX(COALESCE(v.latency_ms / v.default_ms, 0), COALESCE(v.latency_ms / v.reference_ms, 0)) DESC,
         v.preset_id
