// A sample upstream for the demo: answers every request with a JSON echo of
// what it received (method, path, query, headers), so you can see what
// keygate forwards: Authorization, X-Auth-*, X-Forwarded-*, X-Request-Id.
//
//   node dev/echo-upstream.mjs [--port 8181] [--host 127.0.0.1]
//
// Prints `ECHO READY http://HOST:PORT` on stdout once listening.
// Plain Node `http`, no dependencies. Not for production.
import http from 'node:http';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '8181'));

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://upstream.invalid');
  const query = {};
  for (const [k, v] of url.searchParams) {
    query[k] = k in query ? [].concat(query[k], v) : v;
  }
  // Drain the body (not echoed) before answering.
  req.resume();
  req.on('end', () => {
    const body = JSON.stringify(
      { method: req.method, path: url.pathname, query, headers: req.headers },
      null,
      2,
    );
    res.writeHead(200, {
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body) + 1,
    });
    res.end(body + '\n');
  });
});

server.on('error', (e) => {
  console.error(`echo-upstream: ${e.message}`);
  process.exit(1);
});

server.listen(port, host, () => {
  const a = server.address();
  console.log(`ECHO READY http://${a.address}:${a.port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
