// CORS in a real browser: pages on two other ports of 127.0.0.1 call keygate
// with fetch. From the allowed origin (cors-origins), credentialed calls
// work: a bearer token with its preflight (a PUT with a JSON body), the
// session cookie, and a cookie-authenticated write; a response header listed
// in cors-exposed-headers is readable. From the other origin, the browser
// blocks the same calls.
//
//   node dev/browser/cors.mjs --keygate URL --allowed-port A --other-port B --token JWT --shots DIR
//
// Prints `E2E OK` and exits 0, or prints why and exits 1. Run by
// crates/keygate-proxy/tests/gateway/browser.rs, which starts the stack.

import http from 'node:http';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { check, main, signIn } from './lib.mjs';

const { values: args } = parseArgs({
  options: {
    keygate: { type: 'string' },
    'allowed-port': { type: 'string' },
    'other-port': { type: 'string' },
    token: { type: 'string' },
    shots: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
if (!args.keygate || !args['allowed-port'] || !args['other-port'] || !args.token || !args.shots) {
  console.error('usage: node cors.mjs --keygate URL --allowed-port A --other-port B --token JWT --shots DIR');
  process.exit(2);
}
const BASE = args.keygate.replace(/\/+$/, '');

/** Another site: a blank page on 127.0.0.1:port. */
function serveSite(port) {
  return new Promise((ok, fail) => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end('<!DOCTYPE html><html><head><title>another site</title></head><body>another site</body></html>');
    });
    server.once('error', fail);
    server.listen(Number(port), '127.0.0.1', () => ok(server));
  });
}

/** A fetch made by the page's script; `blocked` when the browser refuses to hand over the answer. */
function pageFetch(page, url, init) {
  return page.evaluate(async ({ url, init }) => {
    try {
      const r = await fetch(url, init);
      return { status: r.status, text: await r.text(), requestId: r.headers.get('x-request-id') };
    } catch (err) {
      return { blocked: String(err) };
    }
  }, { url, init });
}

const upstreamSaw = (text) => JSON.parse(text);

async function run(context) {
  const sites = [await serveSite(args['allowed-port']), await serveSite(args['other-port'])];
  try {
    const page = await context.newPage();

    // 1. Sign in at keygate: the session cookie is keygate's (127.0.0.1).
    await page.goto(`${BASE}/app/spa`);
    check(await page.locator('#kc-form-login').count(), `no login form at ${page.url()}`);
    await signIn(page, 'alice');
    await page.waitForURL(`${BASE}/app/spa`);

    // 2. The allowed origin: a bearer token, which needs a preflight.
    await page.goto(`http://127.0.0.1:${args['allowed-port']}/`);
    const put = await pageFetch(page, `${BASE}/api/items`, {
      method: 'PUT',
      credentials: 'include',
      headers: { authorization: `Bearer ${args.token}`, 'content-type': 'application/json' },
      body: '{"name":"cors"}',
    });
    check(put.status === 200, `PUT with a bearer token from the allowed origin: ${JSON.stringify(put)}`);
    const saw = upstreamSaw(put.text);
    check(saw.method === 'PUT', `the upstream saw ${saw.method}`);
    check((saw.headers?.authorization?.[0] ?? '').startsWith('Bearer '), `upstream authorization: ${put.text.slice(0, 300)}`);
    check(put.requestId, 'X-Request-Id is not readable: cors-exposed-headers');

    // 3. The allowed origin: the session cookie, read and write.
    const get = await pageFetch(page, `${BASE}/api/items`, { credentials: 'include' });
    check(get.status === 200, `GET with the cookie from the allowed origin: ${JSON.stringify(get)}`);
    check(upstreamSaw(get.text).headers?.['x-auth-method']?.[0] === 'session', `not a session: ${get.text.slice(0, 300)}`);
    const post = await pageFetch(page, `${BASE}/api/items`, {
      method: 'POST',
      credentials: 'include',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    check(post.status === 200, `cookie-authenticated POST from the allowed origin: ${JSON.stringify(post)}`);

    // 4. Another origin: the browser blocks the same calls.
    await page.goto(`http://127.0.0.1:${args['other-port']}/`);
    const other = await pageFetch(page, `${BASE}/api/items`, { credentials: 'include' });
    check(other.blocked, `GET with the cookie from another origin was readable: ${JSON.stringify(other)}`);
    const otherPut = await pageFetch(page, `${BASE}/api/items`, {
      method: 'PUT',
      credentials: 'include',
      headers: { authorization: `Bearer ${args.token}`, 'content-type': 'application/json' },
      body: '{}',
    });
    check(otherPut.blocked, `PUT from another origin was not blocked: ${JSON.stringify(otherPut)}`);
    return '';
  } finally {
    for (const site of sites) site.close();
  }
}

await main(resolve(args.shots), args.chromium, run);
