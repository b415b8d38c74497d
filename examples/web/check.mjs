// Open a page of this example in headless Chromium (Debian's, or $CHROMIUM; playwright-core downloads no
// browser), wait until it has sampled, and print what it drew as JSON: its result, its status line and the
// canvas's pixels (RGBA, row by row).  The tests compare those pixels with the Python runtime's samples.
//
//   node check.mjs URL [--timeout SECONDS]

import { chromium } from "playwright-core";

const [url, flag, seconds] = process.argv.slice(2);
if (!url || (flag !== undefined && flag !== "--timeout")) {
  console.error("error: usage: node check.mjs URL [--timeout SECONDS]");
  process.exit(2);
}
const timeout = 1000 * Number(seconds ?? 120);

// no background traffic: the machines this runs on have no route out, and Chromium's own calls would queue
const args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
  "--disable-background-networking", "--disable-component-update"];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args });
try {
  const page = await browser.newPage();
  const console_ = [];
  page.on("console", (m) => console_.push(m.text()));
  await page.goto(url);
  await page.waitForFunction(() => window.bnsDone === true, null, { timeout });
  const drawn = await page.evaluate(() => {
    const canvas = document.getElementById("samples");
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    return {
      result: window.bnsResult,
      status: document.getElementById("status").textContent,
      width: canvas.width,
      height: canvas.height,
      pixels: Array.from(pixels),
    };
  });
  console.log(JSON.stringify({ ...drawn, console: console_ }));
} finally {
  await browser.close();
}
