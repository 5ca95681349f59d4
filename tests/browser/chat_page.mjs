// Headless-Chromium test of the chat page served by `ferrollama serve`.
//
//   SERVER_URL=http://127.0.0.1:PORT SCREENSHOT=out.png node tests/browser/chat_page.mjs
//
// Env: SERVER_URL (required), SCREENSHOT (default chat-page.png), CHROMIUM
// (default /usr/bin/chromium), API_KEY (optional, typed into the settings),
// REPLY_TIMEOUT_MS (default 60000), SCREENSHOT_NARROW (optional second
// screenshot at phone width). Exits non-zero with a message on any failure.
import { chromium } from 'playwright-core';

const SERVER_URL = (process.env.SERVER_URL || '').replace(/\/+$/, '');
const SCREENSHOT = process.env.SCREENSHOT || 'chat-page.png';
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const API_KEY = process.env.API_KEY || '';
const REPLY_TIMEOUT = Number(process.env.REPLY_TIMEOUT_MS) || 60000;
const NARROW = process.env.SCREENSHOT_NARROW || '';

if (!SERVER_URL) {
  console.error('chat_page: SERVER_URL is not set (e.g. http://127.0.0.1:8080)');
  process.exit(2);
}

class Failure extends Error {}
function check(cond, msg) { if (!cond) throw new Failure(msg); }

let passed = 0;
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
  } catch (e) {
    console.log(`FAIL - ${name} (${Date.now() - t0} ms)`);
    throw e;
  }
  passed++;
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}

// Watches, inside the page, the assistant message at `index` (counted among
// `#messages .msg.assistant`) until it stops streaming. Returns the distinct
// non-empty texts seen while data-streaming="true". Every DOM change is seen (a
// MutationObserver runs after each task that changed the page, so each streamed
// chunk the page rendered on its own is counted): polling every 20 ms alone saw a
// whole reply at once when the model wrote it in less than that.
async function watchReply(page, index, errorsBefore, timeout) {
  return page.evaluate(async ({ index, errorsBefore, timeout }) => {
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const t0 = performance.now();
    const seen = [];
    let existed = false;
    const look = () => {
      const el = document.querySelectorAll('#messages .msg.assistant')[index];
      if (!el) return null;
      existed = true;
      const text = el.textContent;
      const state = el.getAttribute('data-streaming');
      if (state === 'true' && text && text !== seen[seen.length - 1]) seen.push(text);
      return { el, text, state };
    };
    const observer = new MutationObserver(look);
    observer.observe(document.getElementById('messages'), {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
    try {
      while (performance.now() - t0 < timeout) {
        const errs = document.querySelectorAll('#messages .msg.error');
        if (errs.length > errorsBefore) {
          return { error: errs[errs.length - 1].textContent, seen };
        }
        const now = look();
        if (now && now.state === 'false') {
          return { done: true, final: now.text, seen, elapsed: performance.now() - t0 };
        }
        await sleep(20);
      }
      return { timeout: true, existed, seen };
    } finally {
      observer.disconnect();
    }
  }, { index, errorsBefore, timeout });
}

async function counts(page) {
  return page.evaluate(() => ({
    assistant: document.querySelectorAll('#messages .msg.assistant').length,
    user: document.querySelectorAll('#messages .msg.user').length,
    error: document.querySelectorAll('#messages .msg.error').length,
  }));
}

async function snapshot(page) {
  return page.$$eval('#messages .msg', (els) => els.map((e) => [e.className, e.textContent]));
}

async function ensureSettingsOpen(page) {
  if (!(await page.isVisible('#max_tokens'))) await page.click('#settings-toggle');
  await page.waitForSelector('#max_tokens', { state: 'visible', timeout: 5000 });
}

function describeReply(r) {
  if (r.error) return `error shown instead of a reply: ${r.error}`;
  if (r.timeout) {
    return r.existed
      ? `reply still streaming after ${REPLY_TIMEOUT} ms (${r.seen.length} observations)`
      : `no assistant message appeared within ${REPLY_TIMEOUT} ms`;
  }
  return 'unexpected state';
}

async function main() {
  // The model name the server reports, fetched directly, to compare with the page.
  const mres = await fetch(`${SERVER_URL}/v1/models`, {
    headers: API_KEY ? { Authorization: `Bearer ${API_KEY}` } : {},
  });
  check(mres.ok, `GET /v1/models returned HTTP ${mres.status}`);
  const models = await mres.json();
  const modelId = models?.data?.[0]?.id;
  check(typeof modelId === 'string' && modelId, `GET /v1/models has no data[0].id: ${JSON.stringify(models)}`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    const requests = [];
    page.on('request', (r) => {
      if (r.method() === 'POST' && r.url().endsWith('/v1/chat/completions')) {
        try { requests.push(JSON.parse(r.postData() || 'null')); } catch { requests.push(null); }
      }
    });

    await step('page loads at /', async () => {
      const resp = await page.goto(`${SERVER_URL}/`, { waitUntil: 'load' });
      check(resp && resp.ok(), `GET / returned HTTP ${resp && resp.status()}`);
      for (const id of ['#input', '#send', '#stop', '#new-chat', '#system', '#messages']) {
        check(await page.$(id), `element ${id} is missing`);
      }
    });

    if (API_KEY) {
      await ensureSettingsOpen(page);
      await page.fill('#api-key', API_KEY);
      await page.dispatchEvent('#api-key', 'change');
    }

    await step(`model name "${modelId}" is shown`, async () => {
      await page.waitForFunction((id) => {
        const el = document.getElementById('model');
        return el && el.textContent.includes(id);
      }, modelId, { timeout: 10000 }).catch(async () => {
        const shown = await page.textContent('#model').catch(() => '(no #model element)');
        throw new Failure(`model name not shown; #model says "${shown}"`);
      });
    });

    await step('non-200 response is shown as an error line with error.message', async () => {
      const message = 'injected test error: prompt too long';
      await page.route('**/v1/chat/completions', (route) => route.fulfill({
        status: 400,
        contentType: 'application/json',
        body: JSON.stringify({ error: { message, type: 'invalid_request_error', code: null } }),
      }));
      await page.fill('#input', 'This request gets a 400.');
      await page.click('#send');
      await page.waitForSelector('#messages .msg.error', { timeout: 5000 });
      const text = await page.textContent('#messages .msg.error');
      check(text.includes(message), `error line "${text}" does not contain "${message}"`);
      const c = await counts(page);
      check(c.assistant === 0, `an empty assistant message was left behind after the error (${c.assistant})`);
      check(await page.isEnabled('#send'), 'Send stays disabled after an error');
      await page.unroute('**/v1/chat/completions');
    });

    await step('New chat clears the conversation', async () => {
      await page.click('#new-chat');
      const c = await counts(page);
      check(c.user + c.assistant + c.error === 0, `messages remain after New chat: ${JSON.stringify(c)}`);
      const stored = await page.evaluate(() => localStorage.getItem('ferrollama.conversation'));
      check(stored === null || stored === '[]', `stored conversation not cleared: ${stored}`);
    });

    const systemPrompt = 'You are a helpful assistant. Answer briefly.';
    let firstReply = '';
    await step('first message streams a reply (Send button)', async () => {
      await ensureSettingsOpen(page);
      await page.fill('#system', systemPrompt);
      await page.click('#input');
      await page.keyboard.type('Name three colors.');
      const before = await counts(page);
      const nreq = requests.length;
      await page.click('#send');
      const r = await watchReply(page, before.assistant, before.error, REPLY_TIMEOUT);
      check(r.done, describeReply(r));
      check(r.final && r.final.trim(), 'reply is empty');
      check(r.seen.length >= 2,
        `text did not grow while streaming: ${r.seen.length} distinct non-empty observation(s) ` +
        `with data-streaming="true" (reply arrived all at once?)`);
      firstReply = r.final;
      console.log(`   reply (${r.seen.length} observations, ${Math.round(r.elapsed)} ms): ` +
        JSON.stringify(r.final.length > 160 ? r.final.slice(0, 160) + '…' : r.final));
      const body = requests[nreq];
      check(body, 'no POST /v1/chat/completions was seen');
      check(body.stream === true, `request has stream=${body.stream}`);
      check(body.stream_options?.include_usage === true, 'request lacks stream_options.include_usage');
      check(Array.isArray(body.messages) && body.messages[0]?.role === 'system' &&
        body.messages[0].content === systemPrompt, `system prompt not sent first: ${JSON.stringify(body.messages)}`);
      const last = body.messages[body.messages.length - 1];
      check(last.role === 'user' && last.content === 'Name three colors.', `last message is ${JSON.stringify(last)}`);
      check(body.messages.length === 2, `expected [system, user], got ${body.messages.length} messages`);
      for (const [k, v] of [['temperature', 0.8], ['top_p', 0.95], ['top_k', 40], ['max_tokens', 256]]) {
        check(body[k] === v, `default ${k} should be ${v}, request has ${body[k]}`);
      }
      check(!('seed' in body), `blank seed should be omitted, request has seed=${body.seed}`);
      const u = await page.textContent('#messages .msg.user');
      check(u === 'Name three colors.', `user bubble says ${JSON.stringify(u)}`);
    });

    await step('model text is shown as plain text (no HTML elements inside messages)', async () => {
      const n = await page.evaluate(() => document.querySelectorAll('#messages .msg *').length);
      check(n === 0, `${n} element(s) found inside message bubbles`);
    });

    await step('Stop aborts a long reply and keeps the partial text', async () => {
      await ensureSettingsOpen(page);
      await page.fill('#max_tokens', '512');
      await page.click('#input');
      await page.keyboard.type('Write a long story about a lighthouse keeper.');
      const before = await counts(page);
      const nreq = requests.length;
      await page.keyboard.press('Enter');
      const idx = before.assistant;
      await page.waitForFunction((idx) => {
        const el = document.querySelectorAll('#messages .msg.assistant')[idx];
        return el && el.getAttribute('data-streaming') === 'true' && el.textContent.length > 0;
      }, idx, { timeout: REPLY_TIMEOUT, polling: 20 }).catch(() => {
        throw new Failure(`no streamed text within ${REPLY_TIMEOUT} ms for the long reply`);
      });
      check(await page.isEnabled('#stop'), 'Stop is disabled while streaming');
      await page.click('#stop');
      await page.waitForFunction((idx) => {
        const el = document.querySelectorAll('#messages .msg.assistant')[idx];
        return el && el.getAttribute('data-streaming') === 'false';
      }, idx, { timeout: 10000, polling: 20 }).catch(() => {
        throw new Failure('streaming did not end within 10 s of clicking Stop');
      });
      const text1 = await page.evaluate((idx) =>
        document.querySelectorAll('#messages .msg.assistant')[idx]?.textContent, idx);
      check(text1 && text1.trim(), 'partial reply vanished after Stop');
      await page.waitForTimeout(1000);
      const text2 = await page.evaluate((idx) =>
        document.querySelectorAll('#messages .msg.assistant')[idx]?.textContent, idx);
      check(text2 === text1, 'reply text changed after Stop');
      check(await page.isEnabled('#send'), 'Send is not enabled again after Stop');
      check(!(await page.isEnabled('#stop')), 'Stop is still enabled after Stop');
      const body = requests[nreq];
      check(body && body.max_tokens === 512, `max_tokens from settings not sent: ${body && body.max_tokens}`);
      check(body.messages.length === 4, `expected 4 messages (system, user, assistant, user), got ${body.messages.length}`);
      check(body.messages[2].role === 'assistant' && body.messages[2].content === firstReply,
        'previous assistant reply not sent back as history');
      console.log(`   partial reply kept: ${text1.length} chars`);
    });

    await step('server answers again after the aborted request (Shift+Enter adds a newline)', async () => {
      await page.fill('#max_tokens', '32');
      await page.click('#input');
      await page.keyboard.type('Say OK.');
      await page.keyboard.press('Shift+Enter');
      await page.keyboard.type('Nothing else.');
      const value = await page.inputValue('#input');
      check(value === 'Say OK.\nNothing else.', `Shift+Enter: input holds ${JSON.stringify(value)}`);
      const before = await counts(page);
      check(before.user === 2, `Shift+Enter sent the message (${before.user} user messages)`);
      await page.keyboard.press('Enter');
      const r = await watchReply(page, before.assistant, before.error, REPLY_TIMEOUT);
      check(r.done, describeReply(r));
      check(r.final && r.final.trim(), 'reply is empty');
      const users = await page.$$eval('#messages .msg.user', (els) => els.map((e) => e.textContent));
      check(users[users.length - 1] === 'Say OK.\nNothing else.', `newline not kept: ${JSON.stringify(users.at(-1))}`);
      const stats = await page.evaluate(() => {
        const s = document.querySelectorAll('#messages .stats');
        return s.length ? s[s.length - 1].textContent : '';
      });
      check(/tok\/s/.test(stats), `no tokens/s stats after the reply: ${JSON.stringify(stats)}`);
      console.log(`   stats: ${stats}`);
    });

    await step('conversation and settings are restored after reload', async () => {
      const before = await snapshot(page);
      await page.reload({ waitUntil: 'load' });
      const after = await snapshot(page);
      check(JSON.stringify(after) === JSON.stringify(before),
        `conversation differs after reload:\n before ${JSON.stringify(before)}\n after  ${JSON.stringify(after)}`);
      check((await page.inputValue('#max_tokens')) === '32', 'max_tokens not restored');
      check((await page.inputValue('#system')) === systemPrompt, 'system prompt not restored');
      const st = await page.$$eval('#messages .msg.assistant', (els) => els.map((e) => e.getAttribute('data-streaming')));
      check(st.every((s) => s === 'false'), `restored messages have data-streaming ${JSON.stringify(st)}`);
      await page.waitForFunction((id) => document.getElementById('model')?.textContent.includes(id),
        modelId, { timeout: 10000 });
      // Restore the default for a tidy screenshot.
      await ensureSettingsOpen(page);
      await page.fill('#max_tokens', '256');
    });

    // With a document store (scripts/test-chat-page.sh indexes one and sets RAG_QUESTION
    // and RAG_SOURCE), the switch appears, sends `rag`, and the cited chunks are shown.
    if (process.env.RAG_QUESTION) {
      await step('chat with documents shows the chunks the answer was given', async () => {
        await ensureSettingsOpen(page);
        await page.waitForSelector('#rag-field:not([hidden])', { timeout: 10000 });
        const label = await page.textContent('#rag-label');
        check(/\(\d+ indexed\)/.test(label), `switch label is ${JSON.stringify(label)}`);
        await page.check('#rag');
        await page.click('#input');
        await page.keyboard.type(process.env.RAG_QUESTION);
        const before = await counts(page);
        const nreq = requests.length;
        await page.click('#send');
        const r = await watchReply(page, before.assistant, before.error, REPLY_TIMEOUT);
        check(r.done, describeReply(r));
        const body = requests[nreq];
        check(body?.rag?.k === 4, `request rag is ${JSON.stringify(body?.rag)}`);
        const items = await page.$$eval('#messages .turn.assistant', (ts) => {
          const last = ts[ts.length - 1].querySelector('.sources');
          return last ? Array.from(last.querySelectorAll('li'), (li) => li.textContent) : [];
        });
        check(items.length >= 1, 'no sources shown under the answer');
        check(items[0].startsWith('[1] ') && items[0].includes(process.env.RAG_SOURCE),
          `first source is ${JSON.stringify(items[0])}`);
        console.log(`   sources: ${JSON.stringify(items.map((t) => t.slice(0, 60)))}`);
        const n = await page.$$eval('.sources *', (els) => els.filter((e) => !['LI', 'SPAN'].includes(e.tagName)).length);
        check(n === 0, `${n} unexpected element(s) inside the sources list`);
        await page.reload({ waitUntil: 'load' });
        const kept = await page.$$eval('#messages .sources li', (els) => els.length);
        check(kept === items.length, `sources after reload: ${kept}, before: ${items.length}`);
        await ensureSettingsOpen(page);
        await page.uncheck('#rag');
      });
    }

    await step('no JavaScript errors on the page', async () => {
      check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
    });

    await step(`full-page screenshot saved to ${SCREENSHOT}`, async () => {
      await page.evaluate(() => document.activeElement && document.activeElement.blur());
      await page.mouse.move(0, 0);
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
    });

    if (NARROW) {
      await step(`narrow layout (390 px) fits, screenshot ${NARROW}`, async () => {
        const p2 = await context.newPage();
        await p2.setViewportSize({ width: 390, height: 800 });
        await p2.goto(`${SERVER_URL}/`, { waitUntil: 'load' });
        const overflow = await p2.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        check(overflow <= 0, `page is ${overflow}px wider than the viewport`);
        check(await p2.isVisible('#send') && await p2.isVisible('#input'), 'input or Send not visible');
        await p2.screenshot({ path: NARROW });
        await p2.close();
      });
    }
  } finally {
    await browser.close();
  }
}

const deadline = setTimeout(() => {
  console.error('chat_page: FAILED: whole test exceeded 10 minutes');
  process.exit(1);
}, 10 * 60 * 1000);
deadline.unref();

try {
  await main();
  console.log(`${passed} passed, 0 failed`);
} catch (e) {
  console.error(`chat_page: FAILED: ${e instanceof Failure ? e.message : e?.stack || e}`);
  console.log(`${passed} passed, 1 failed`);
  process.exit(1);
}
