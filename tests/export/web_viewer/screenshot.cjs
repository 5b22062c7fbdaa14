// Screenshots of pages in headless chromium through playwright-core (no browser download:
// the system chromium). Usage: node screenshot.cjs CHROMIUM OUT_DIR URL... ; writes
// OUT_DIR/<i>.png for the i-th URL once its title starts with "rendered", and prints one
// JSON line per page: {"url", "title", "png"}. Exits 1 on a page error or a 60 s wait.
const { chromium } = require('playwright-core');
const path = require('path');

(async () => {
  const [executablePath, outDir, ...urls] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath, headless: true,
    args: ['--no-sandbox', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic',
      '--use-angle=swiftshader', '--enable-unsafe-swiftshader'],
  });
  let failed = false;
  try {
    for (const [i, url] of urls.entries()) {
      const page = await browser.newPage({ viewport: { width: 400, height: 400 }, deviceScaleFactor: 1 });
      const errors = [];
      page.on('pageerror', (e) => errors.push(e.message));
      await page.goto(url);
      let title;
      try {
        await page.waitForFunction(() => /^(rendered|error)/.test(document.title), null, { timeout: 60000 });
        title = await page.title();
      } catch (e) {
        title = 'timeout: ' + (await page.title());
      }
      const png = path.join(outDir, `${i}.png`);
      await page.screenshot({ path: png });
      console.log(JSON.stringify({ url, title, png, errors }));
      failed = failed || !title.startsWith('rendered') || errors.length > 0;
      await page.close();
    }
  } finally {
    await browser.close();
  }
  process.exit(failed ? 1 : 0);
})();
