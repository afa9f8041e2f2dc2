import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  ErrorGate,
  LatestRequest,
  NdjsonDecoder,
  codePointOffset,
  editBody,
  failureFromReply,
  fileBody,
  notebookBody,
  notebookRequestBody,
  serverLanguage
} from '../src/protocol';

test('a notebook body carries every cell source, the cell index and the cursor', () => {
  const cells = [
    { cell_type: 'markdown' as const, source: '# Title' },
    { cell_type: 'code' as const, source: 'import pandas as pd' },
    { cell_type: 'code' as const, source: 'df.' }
  ];
  const body = notebookBody(cells, 2, 3, {
    path: 'a.ipynb',
    language: 'python',
    maxTokens: 64,
    kernelId: 'k1'
  });
  assert.deepEqual(body, {
    cells,
    cell_index: 2,
    cursor: 3,
    stream: true,
    path: 'a.ipynb',
    language: 'python',
    max_tokens: 64,
    kernel_id: 'k1'
  });
});

test('a prefetch body asks for no stream; single-line mode is passed on', () => {
  const body = fileBody('x = 1', 5, { prefetch: true, singleLine: true });
  assert.equal(body.stream, false);
  assert.equal(body.prefetch, true);
  assert.equal(body.single_line, true);
  assert.equal(body.text, 'x = 1');
});

test('cursor offsets are converted from UTF-16 units to code points', () => {
  const text = 'a = "😀"\nb';
  const utf16 = text.indexOf('\n');
  assert.equal(utf16, 8); // the emoji is two UTF-16 units
  assert.equal(codePointOffset(text, utf16), 7);
  assert.equal(codePointOffset('plain', 3), 3);
});

test('editor language names map to the names the server knows', () => {
  assert.equal(serverLanguage('ipython'), 'python');
  assert.equal(serverLanguage('Markdown'), 'markdown');
  assert.equal(serverLanguage(null, 'text'), 'text');
  assert.equal(serverLanguage(undefined), 'python');
});

test('the cell is the one whose editor asked, even when another holds the same text', () => {
  const cells = [
    { id: 'a', cell_type: 'code' as const, source: '' },
    { id: 'b', cell_type: 'code' as const, source: 'x = 1', execution_count: 3 },
    { id: 'c', cell_type: 'code' as const, source: '' }
  ];
  const body = notebookRequestBody(cells, 'c', { text: '', offset: 0 });
  assert.equal(body?.cell_index, 2);
  assert.deepEqual(body?.cells?.[1], { cell_type: 'code', source: 'x = 1', execution_count: 3 });
  assert.equal(Object.hasOwn(body?.cells?.[0] ?? {}, 'id'), false);
  // The focus moved on: the request's text is not that cell's text any more.
  assert.equal(notebookRequestBody(cells, 'b', { text: 'x = 12', offset: 6 }), null);
  assert.equal(notebookRequestBody(cells, 'gone', { text: '', offset: 0 }), null);
});

test("a cell's tags and the notebook's own switch travel as nbformat stores them", () => {
  const cells = [
    {
      id: 'a',
      cell_type: 'code' as const,
      source: 'answer = 42',
      metadata: { tags: ['no-context'] }
    },
    { id: 'b', cell_type: 'code' as const, source: 'x' }
  ];
  const body = notebookRequestBody(
    cells,
    'b',
    { text: 'x', offset: 1 },
    { notebook: { enabled: false } }
  );
  assert.deepEqual(body?.cells?.[0].metadata, { tags: ['no-context'] });
  assert.equal(Object.hasOwn(body?.cells?.[1] ?? {}, 'metadata'), false);
  assert.deepEqual(body?.metadata, { codestral: { enabled: false } });
  // No notebook settings: no metadata key at all.
  const plain = notebookRequestBody(cells, 'b', { text: 'x', offset: 1 });
  assert.equal(Object.hasOwn(plain ?? {}, 'metadata'), false);
});

test('NDJSON lines split across chunks are reassembled', () => {
  const decoder = new NdjsonDecoder();
  const encoder = new TextEncoder();
  assert.deepEqual(decoder.push(encoder.encode('{"delta": "df')), []);
  assert.deepEqual(decoder.push(encoder.encode('."}\n{"delta": "head()"}\n{"done"')), [
    { delta: 'df.' },
    { delta: 'head()' }
  ]);
  assert.deepEqual(decoder.push(': true, "completion": "df.head()"}'), []);
  assert.deepEqual(decoder.flush(), [{ done: true, completion: 'df.head()' }]);
});

test('a multi-byte character split across chunks survives', () => {
  const decoder = new NdjsonDecoder();
  const bytes = new TextEncoder().encode('{"delta": "é"}\n');
  const cut = bytes.indexOf(0xc3) + 1;
  assert.deepEqual(decoder.push(bytes.slice(0, cut)), []);
  assert.deepEqual(decoder.push(bytes.slice(cut)), [{ delta: 'é' }]);
});

test('a line that is not JSON becomes a readable error event', () => {
  const [event] = new NdjsonDecoder().push('oops\n');
  assert.equal('error' in event ? event.error.kind : undefined, 'bad_reply');
});

test('error replies keep the server message, kind and retry-after', () => {
  const failure = failureFromReply(
    429,
    'Too Many Requests',
    '{"error": {"kind": "rate_limited", "message": "wait", "retry_after": 3}}'
  );
  assert.equal(failure.kind, 'rate_limited');
  assert.equal(failure.message, 'wait');
  assert.equal(failure.retryAfter, 3);
  assert.match(failureFromReply(502, 'Bad Gateway', '<html>').message, /502 Bad Gateway/);
});

test('the same kind of error is shown once, again after a success or a quiet spell', () => {
  const gate = new ErrorGate(1000);
  const error = { kind: 'auth' as const, message: 'bad key' };
  assert.equal(gate.shouldShow(error, 0), true);
  assert.equal(gate.shouldShow(error, 100), false);
  assert.equal(gate.shouldShow({ ...error, message: 'bad key (again)' }, 200), false);
  assert.equal(gate.shouldShow(error, 5000), true);
  gate.reset();
  assert.equal(gate.shouldShow(error, 5001), true);
});

test('a new request aborts the previous one', () => {
  const latest = new LatestRequest();
  const first = latest.begin();
  assert.equal(first.signal.aborted, false);
  const second = latest.begin();
  assert.equal(first.signal.aborted, true);
  assert.equal(second.signal.aborted, false);
  assert.equal(latest.isLatest(first.ticket), false);
  assert.equal(latest.isLatest(second.ticket), true);
});

test("an edit body sends the edited cell's errors only, the selection in code points", () => {
  const cells = [
    { cell_type: 'code' as const, source: 'import statistics' },
    { cell_type: 'code' as const, source: "s = '\u{1F600}'\nmean(value)" }
  ];
  const outputs = [
    { output_type: 'stream', name: 'stdout', text: 'hi' },
    { output_type: 'error', ename: 'NameError', evalue: 'value', traceback: ['NameError'] }
  ];
  const start = cells[1].source.indexOf('mean');
  const body = editBody(
    { cells, cellIndex: 1, kind: 'fix', outputs, selection: { start, end: start + 11 } },
    { path: 'a.ipynb', kernelId: 'k1', notebook: { enabled: true } }
  );
  assert.equal(body.kind, 'fix');
  assert.equal(body.stream, true);
  assert.deepEqual(body.cells[0], cells[0]);
  assert.deepEqual(body.cells[1].outputs, [outputs[1]]); // no stream output leaves the browser
  assert.deepEqual(body.selection, { start: start - 1, end: start + 10 }); // the emoji is one code point
  assert.equal(body.path, 'a.ipynb');
  assert.equal(body.kernel_id, 'k1');
  assert.deepEqual(body.metadata, { codestral: { enabled: true } });
  // No selection (or an empty one): the whole cell; a rewrite carries its instruction.
  const whole = editBody({
    cells,
    cellIndex: 0,
    kind: 'rewrite',
    selection: { start: 3, end: 3 },
    instruction: 'shorter'
  });
  assert.equal(whole.selection, undefined);
  assert.equal(whole.instruction, 'shorter');
  assert.equal(whole.cells[0].outputs, undefined);
});
