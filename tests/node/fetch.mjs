// Fetch one URL with Node's global fetch, as an unmodified app would.
//
// usage: node fetch.mjs plain|env-agent URL
//
//   plain      global fetch as it is: Node < 24 reads no proxy variable
//              (NODE_USE_ENV_PROXY included), so the request goes direct.
//   env-agent  first setGlobalDispatcher(new EnvHttpProxyAgent()) from the
//              npm `undici` package (tests/node/node_modules, installed by
//              scripts/test): it reads http_proxy/HTTP_PROXY,
//              https_proxy/HTTPS_PROXY and no_proxy/NO_PROXY.
//
// CA trust only through NODE_EXTRA_CA_CERTS. Prints one JSON object
// {status, body}; exit 0 when an HTTP response arrived, 2 on a transport
// error (JSON has "error"), 3 when `undici` cannot be loaded.

const [mode, url] = process.argv.slice(2);
if (!['plain', 'env-agent'].includes(mode) || !url) {
  console.error('usage: node fetch.mjs plain|env-agent URL');
  process.exit(64);
}

if (mode === 'env-agent') {
  let undici;
  try {
    undici = await import('undici');
  } catch (e) {
    console.error(
      `npm package 'undici' is not installed next to ${import.meta.url} (${e.message}): ` +
        'run scripts/test, which runs `npm ci` in tests/node'
    );
    process.exit(3);
  }
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
}

try {
  const res = await fetch(url, { signal: AbortSignal.timeout(30000) });
  const body = await res.text();
  console.log(JSON.stringify({ status: res.status, body }));
} catch (e) {
  const cause = e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message || e.cause})` : '';
  console.log(JSON.stringify({ error: `${e.name}: ${e.message}${cause}` }));
  process.exit(2);
}
