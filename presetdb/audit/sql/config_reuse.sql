-- title: Config reuse
-- purpose: How many active keys share each stored config. A config serving many keys
--   hints that those keys could be one range; a config serving one key is normal.
-- params: none
-- columns:
--   config_sha256: sha256 of the canonical config JSON
--   active_keys: active presets using the config
--   kernels: kernels using it, comma separated
--   platforms: platforms using it, comma separated
--   config: the Helion config JSON
-- highlight: {config_sha256} serves {active_keys} key(s) of {kernels} on {platforms}
SELECT config_sha256,
       COUNT(*) AS active_keys,
       group_concat(DISTINCT kernel) AS kernels,
       group_concat(DISTINCT platform) AS platforms,
       config
FROM v_active_presets
GROUP BY config_sha256
ORDER BY active_keys DESC, config_sha256
