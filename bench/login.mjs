#!/usr/bin/env node
// Logs a user in to keygate through its OpenID provider (dev/idp) the way a
// browser would, and prints the session cookie(s) as one `Cookie` header
// value, e.g. `kg_session=…` (or `kg_session=…; kg_session-1=…` when keygate
// split a large cookie-session into chunks). Used by bench/scale.sh and
// bench/soak.sh.
//
//   node bench/login.mjs http://127.0.0.1:PORT [--user alice] [--password alice]
//                        [--start '/oauth/authorize?return_to=/']
//   node bench/login.mjs --device VERIFICATION_URI_COMPLETE [--user bob]
//
// With --device it approves a device flow instead (as `act_as_user` in
// crates/keygate-testkit/src/browser.rs does): it opens the provider's
// verification address, submits each page's form (confirmation, sign-in)
// as the user, and exits 0 once the provider says the device is signed in.
//
// The flow is the one of `login_at` in crates/keygate/tests/common/browser.rs:
// GET <base><start>, follow redirects to the provider's login page, fill
// `username`/`password` in its first form, post it to the form's action,
// follow redirects, and repeat until the browser is back on keygate (on
// <base>, outside /oauth/). Node >= 20, no npm packages: global fetch with
// `redirect: 'manual'` and a cookie jar of our own. Like the test browser,
// the jar keeps one value per cookie name and sends every cookie to every
// host (all of them are on 127.0.0.1, where browsers do not separate cookies
// by port either) and ignores Path.
import { parseArgs } from 'node:util';

const { values: opts, positionals } = parseArgs({
  options: {
    user: { type: 'string', default: 'alice' },
    password: { type: 'string' },
    start: { type: 'string', default: '/oauth/authorize?return_to=/' },
    device: { type: 'string' },
  },
  allowPositionals: true,
});
if (positionals.length !== (opts.device ? 0 : 1)) {
  console.error('usage: node bench/login.mjs BASE_URL [--user U] [--password P] [--start PATH]\n'
    + '       node bench/login.mjs --device VERIFICATION_URI_COMPLETE [--user U] [--password P]');
  process.exit(2);
}
const base = (positionals[0] ?? '').replace(/\/+$/, '');
const user = opts.user;
const password = opts.password ?? user; // dev/idp: password = user name

function fail(msg) {
  console.error(`login.mjs: ${msg}`);
  process.exit(1);
}

// ------------------------------------------------------------------ cookies
const jar = new Map(); // name -> value

function storeCookie(setCookie) {
  const [pair, ...attrs] = setCookie.split(';');
  const eq = pair.indexOf('=');
  if (eq <= 0) return;
  const name = pair.slice(0, eq).trim();
  const value = pair.slice(eq + 1).trim();
  const expired = attrs.some((a) => {
    const attr = a.trim().toLowerCase();
    return attr === 'max-age=0' || attr.startsWith('expires=thu, 01 jan 1970');
  });
  if (expired || value === '') jar.delete(name);
  else jar.set(name, value);
}

const cookieHeader = (names = [...jar.keys()]) => names.map((n) => `${n}=${jar.get(n)}`).join('; ');

// ------------------------------------------------------------------ browsing
// Sends one request (a GET, or a form POST), then follows redirects as GETs,
// keeping cookies. Returns the final page: { url, status, body }.
async function go(url, form) {
  for (let hop = 0; hop < 20; hop++) {
    const init = { redirect: 'manual', headers: { accept: 'text/html' } };
    if (jar.size) init.headers.cookie = cookieHeader();
    if (form) {
      init.method = 'POST';
      init.body = new URLSearchParams(form);
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch (err) {
      fail(`${form ? 'POST' : 'GET'} ${url}: ${err.cause?.message ?? err.message}`);
    }
    for (const c of res.headers.getSetCookie()) storeCookie(c);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      await res.arrayBuffer(); // drain, so the connection can be reused
      url = new URL(location, url);
      form = undefined;
      continue;
    }
    return { url: new URL(url), status: res.status, body: await res.text() };
  }
  fail(`too many redirects (last: ${url})`);
}

// ------------------------------------------------------------------ forms
const unescape = (s) => s
  .replaceAll('&quot;', '"').replaceAll('&#39;', "'")
  .replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&');

function attr(tag, name) {
  const m = tag.match(new RegExp(`\\s${name}="([^"]*)"`, 'i'));
  return m ? unescape(m[1]) : undefined;
}

// The first form of `html`: its action and its inputs' [name, value] pairs.
function firstForm(html) {
  const m = html.match(/<form\b([^>]*)>([\s\S]*?)(<\/form>|$)/i);
  if (!m) return undefined;
  const fields = [];
  for (const [, input] of m[2].matchAll(/<input\b([^>]*)>/gi)) {
    const name = attr(input, 'name');
    if (name !== undefined) fields.push([name, attr(input, 'value') ?? '']);
  }
  return { action: attr(m[1], 'action'), fields };
}

// ------------------------------------------------------------------ forms, in turn
const fillIn = (form) => form.fields.map(([name, value]) => {
  if (name === 'username') return [name, user];
  if (name === 'password') return [name, password];
  return [name, value];
});

// ------------------------------------------------------------------ device flow
if (opts.device) {
  const done = (page) => /Sign-in Success|Device Login Successful/.test(page.body);
  let page = await go(new URL(opts.device));
  for (let step = 0; step < 10 && !done(page); step++) {
    const form = firstForm(page.body);
    if (!form) fail(`no form at ${page.url} (HTTP ${page.status}): ${page.body.slice(0, 500)}`);
    page = await go(form.action ? new URL(form.action, page.url) : page.url, fillIn(form));
  }
  if (!done(page)) fail(`the device flow did not finish: ${page.url} ${page.body.slice(0, 500)}`);
  process.exit(0);
}

// ------------------------------------------------------------------ login
const backOnKeygate = (page) => page.url.href.startsWith(`${base}/`)
  && !page.url.pathname.startsWith('/oauth/');

let page = await go(new URL(`${base}${opts.start}`));
for (let step = 0; step < 10 && !backOnKeygate(page); step++) {
  const form = firstForm(page.body);
  if (!form) fail(`no form at ${page.url} (HTTP ${page.status}): ${page.body.slice(0, 500)}`);
  page = await go(form.action ? new URL(form.action, page.url) : page.url, fillIn(form));
}
if (!backOnKeygate(page)) fail(`login did not come back to keygate: ${page.url} ${page.body.slice(0, 500)}`);
if (page.status !== 200) fail(`back on keygate with HTTP ${page.status} at ${page.url}: ${page.body.slice(0, 500)}`);

const session = [...jar.keys()].filter((n) => n === 'kg_session' || n.startsWith('kg_session-'));
if (!session.length) fail(`no kg_session cookie after the login (cookies: ${[...jar.keys()].join(', ')})`);
console.log(cookieHeader(session));
