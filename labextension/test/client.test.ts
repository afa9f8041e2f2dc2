/**
 * CodestralClient against a real HTTP server on loopback that streams NDJSON
 * the way the server extension does.
 */
import assert from 'node:assert/strict';
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';

import { ServerConnection } from '@jupyterlab/services';

import { CodestralClient } from '../src/client';
import { CompletionFailure } from '../src/protocol';

let server: Server;
let baseUrl = '';
const seen: { url: string; auth: string | undefined; body: Record<string, unknown> | null }[] = [];
let closedEarly = 0;

function handle(req: IncomingMessage, res: ServerResponse): void {
  let raw = '';
  req.on('data', chunk => (raw += chunk));
  req.on('end', () => {
    const body = raw ? JSON.parse(raw) : null;
    // ServerConnection may add a cache-busting query string.
    const path = (req.url ?? '').split('?')[0];
    seen.push({ url: path, auth: req.headers.authorization, body });
    if (path === '/codestral/status') {
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ backend: 'mistral', model: 'm', state: 'ready', ready: true }));
      return;
    }
    if (body?.path === 'error.ipynb') {
      res.writeHead(429, { 'Content-Type': 'application/json' });
      res.end(
        JSON.stringify({ error: { kind: 'rate_limited', message: 'slow down', retry_after: 2 } })
      );
      return;
    }
    res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
    if (body?.path === 'slow.ipynb') {
      res.write(JSON.stringify({ delta: 'a' }) + '\n');
      const timer = setInterval(() => res.write(JSON.stringify({ delta: 'b' }) + '\n'), 50);
      res.on('close', () => {
        clearInterval(timer);
        if (!res.writableEnded) {
          closedEarly++;
        }
      });
      return;
    }
    // Deliberately split a line across writes.
    res.write('{"delta": "df.');
    setTimeout(() => {
      res.write('"}\n{"delta": "head()"}\n');
      res.end('{"done": true, "completion": "df.head()", "timings": {"first_token_ms": 5}}\n');
    }, 20);
  });
}

before(async () => {
  server = createServer(handle);
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

after(() => server.close());

function client(): CodestralClient {
  return new CodestralClient(
    ServerConnection.makeSettings({
      baseUrl,
      wsUrl: baseUrl.replace('http', 'ws'),
      token: 'secret-token',
      appendToken: false
    })
  );
}

test('streams events and sends the Jupyter token', async () => {
  const events = [];
  const body = {
    cells: [{ cell_type: 'code' as const, source: 'df.' }],
    cell_index: 0,
    cursor: 3,
    stream: true,
    path: 'a.ipynb'
  };
  for await (const event of client().complete(body, new AbortController().signal)) {
    events.push(event);
  }
  assert.deepEqual(
    events.map(e => ('delta' in e ? e.delta : 'done' in e ? 'DONE' : '?')),
    ['df.', 'head()', 'DONE']
  );
  const request = seen.find(s => s.body?.path === 'a.ipynb');
  assert.equal(request?.url, '/codestral/complete');
  assert.equal(request?.auth, 'token secret-token');
  assert.deepEqual(request?.body, body);
});

test('an error reply becomes a CompletionFailure with the server message', async () => {
  const body = { text: 'x', cursor: 1, stream: true, path: 'error.ipynb' };
  await assert.rejects(
    async () => {
      for await (const _ of client().complete(body, new AbortController().signal)) {
        // nothing
      }
    },
    (error: unknown) =>
      error instanceof CompletionFailure &&
      error.kind === 'rate_limited' &&
      error.message === 'slow down' &&
      error.retryAfter === 2
  );
});

test('aborting closes the connection so the server can cancel the backend', async () => {
  const controller = new AbortController();
  const body = { text: 'x', cursor: 1, stream: true, path: 'slow.ipynb' };
  const received: string[] = [];
  for await (const event of client().complete(body, controller.signal)) {
    received.push('delta' in event ? event.delta : '');
    if (received.length === 2) {
      controller.abort();
    }
  }
  for (let i = 0; i < 50 && closedEarly === 0; i++) {
    await new Promise(resolve => setTimeout(resolve, 10));
  }
  assert.equal(closedEarly, 1);
  assert.deepEqual(received, ['a', 'b']);
});

test('status is read from codestral/status', async () => {
  const status = await client().status();
  assert.equal(status.backend, 'mistral');
  assert.equal(status.ready, true);
});
