// Drives the stock @actions/cache client (3.x, protocol v1: ACTIONS_CACHE_URL +
// ACTIONS_RUNTIME_TOKEN) for tests/cache/actions-cache.sh.
//   node client.js save KEY PATH...            -> prints {"cacheId":N}
//   node client.js restore KEY RESTOREKEYS PATH... (RESTOREKEYS comma-separated or "-")
//                                              -> prints {"matchedKey":K|null}
'use strict';
const cache = require('@actions/cache');

async function main() {
  const [cmd, key, ...rest] = process.argv.slice(2);
  if (!cache.isFeatureAvailable()) throw new Error('ACTIONS_CACHE_URL not set');
  if (cmd === 'save') {
    const id = await cache.saveCache(rest, key);
    console.log(JSON.stringify({ cacheId: id }));
  } else if (cmd === 'restore') {
    const [restoreKeys, ...paths] = rest;
    const rk = restoreKeys === '-' ? [] : restoreKeys.split(',');
    const hit = await cache.restoreCache(paths, key, rk);
    console.log(JSON.stringify({ matchedKey: hit === undefined ? null : hit }));
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
}

main().catch((e) => {
  console.error(`client error: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
