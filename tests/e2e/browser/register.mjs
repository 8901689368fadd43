// Drives the softphone page in headless Chromium (SPEC W4): serves page/ over HTTP on
// 127.0.0.1, opens it with the account to register, waits for JsSIP's verdict, keeps a
// screenshot, prints the outcome as JSON and exits 0 only when JsSIP says "registered".
//
//   node register.mjs --ws wss://127.0.0.1:8443 --uri sip:alice@example.com --password secret \
//        --screenshot out.png [--spki BASE64] [--timeout 30]
//
// --spki makes Chromium accept exactly the server certificate whose public key hashes to it
// (a throwaway certificate, trusted for this run only).
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith('--')) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
for (const required of ['ws', 'uri', 'password', 'screenshot']) {
  if (!args[required]) {
    console.error(`register.mjs: --${required} is required`);
    process.exit(2);
  }
}
const timeout = Number(args.timeout ?? 30) * 1000;
const pageDir = path.join(path.dirname(fileURLToPath(import.meta.url)), 'page');

const server = http.createServer((req, res) => {
  const name = new URL(req.url, 'http://x').pathname.replace(/^\//, '') || 'index.html';
  const file = path.join(pageDir, path.basename(name));
  fs.readFile(file, (err, body) => {
    if (err) { res.writeHead(404); res.end(); return; }
    const type = file.endsWith('.js') ? 'text/javascript' : 'text/html';
    res.writeHead(200, { 'Content-Type': `${type}; charset=utf-8` });
    res.end(body);
  });
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const pagePort = server.address().port;

const chromeArgs = ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'];
if (args.spki) chromeArgs.push(`--ignore-certificate-errors-spki-list=${args.spki}`);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: chromeArgs,
});
let outcome;
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 800, height: 420 });
  page.on('console', (m) => process.stderr.write(`[page] ${m.text()}\n`));
  page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
  const query = new URLSearchParams({ ws: args.ws, uri: args.uri, password: args.password });
  await page.goto(`http://127.0.0.1:${pagePort}/index.html?${query}`);
  try {
    await page.waitForFunction('window.outcome !== undefined', { timeout });
    outcome = await page.evaluate(() => window.outcome);
  } catch (e) {
    outcome = { registered: false, cause: `no verdict within ${timeout / 1000} s` };
  }
  await page.screenshot({ path: args.screenshot });
} finally {
  await browser.close();
  server.close();
}
console.log(JSON.stringify(outcome));
process.exit(outcome.registered ? 0 : 1);
