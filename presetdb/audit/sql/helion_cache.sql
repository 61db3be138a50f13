-- title: Helion cache entries
-- purpose: Helion's own autotune results, kept under Helion's cache key by the remote-cache
--   backend (presetdb.helion.remote_cache) and `presetdb import --format helion-cache`:
--   what a plain @helion.kernel on any machine reads back instead of searching. Newest
--   first. Kernels are named by Helion's hash of their source: Helion's key names no kernel.
-- params: none
-- columns:
--   cache_key: Helion's cache key (its <cache_key>.best_config file name)
--   hardware: the device as Helion names it
--   platform: canonical platform of that device name (platform_aliases), when known
--   runtime_name: CUDA/HIP version the entry was tuned under
--   kernel_source_hash: Helion's sha256 of the kernel function's source
--   specialization_key: argument specialization (dtypes, size buckets), as Helion writes it
--   config: the config JSON
--   source: remote-cache (a Helion autotune) or import-helion-cache
--   written_by: the host that wrote it, or the imported file
--   helion_version: helion of the writing process (unknown for imports)
--   updated_at: when the entry was last written (UTC)
-- highlight: {hardware} kernel {kernel_source_hash}: {config} ({source}, {updated_at})
SELECT e.cache_key,
       e.hardware,
       pl.name AS platform,
       e.runtime_name,
       e.kernel_source_hash,
       e.specialization_key,
       c.config_json AS config,
       e.source,
       COALESCE(e.host, e.source_file) AS written_by,
       e.helion_version,
       e.updated_at
FROM helion_cache_entries e
JOIN configs c ON c.id = e.config_id
LEFT JOIN platform_aliases a ON lower(a.alias) = lower(trim(e.hardware))
LEFT JOIN platforms pl ON pl.id = a.platform_id
ORDER BY e.updated_at DESC, e.id DESC
