import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import Ajv2020 from 'ajv/dist/2020';

import { MAX_TOKENS } from '../src/contract';
import { fileBody, notebookBody, notebookRequestBody } from '../src/protocol';

// The server's contract: every request body the frontend builds must be one it describes.
const schema = JSON.parse(
  readFileSync(
    join(__dirname, '..', '..', '..', 'jupyter_codestral', 'contract', 'codestral.schema.json'),
    'utf8'
  )
);
const ajv = new Ajv2020({ allErrors: true, strict: false });
ajv.addSchema(schema, 'contract');

function errors(shape: string, value: unknown): string[] {
  const validate = ajv.getSchema(`contract#/$defs/${shape}`);
  assert.ok(validate, shape);
  return validate(value) ? [] : (validate.errors ?? []).map(e => `${e.instancePath} ${e.message}`);
}

const cells = [
  { cell_type: 'markdown' as const, source: '# Title' },
  { cell_type: 'code' as const, source: 'import pandas as pd', execution_count: 1 },
  { cell_type: 'code' as const, source: 'df.', metadata: { tags: ['no-context'] } }
];

test('the request bodies the frontend builds are the contract', () => {
  const options = {
    path: 'a.ipynb',
    language: 'python',
    maxTokens: 64,
    kernelId: 'k1',
    singleLine: true,
    notebook: { enabled: false }
  };
  assert.deepEqual(errors('CompleteRequest', notebookBody(cells, 2, 3, options)), []);
  assert.deepEqual(errors('CompleteRequest', notebookBody(cells, 2, 3, { prefetch: true })), []);
  assert.deepEqual(errors('CompleteRequest', fileBody('import os\nos.', 12, options)), []);
  const withIds = cells.map((cell, i) => ({ ...cell, id: `c${i}` }));
  const body = notebookRequestBody(withIds, 'c2', { text: 'df.', offset: 3 });
  assert.ok(body);
  assert.deepEqual(errors('CompleteRequest', body), []);
});

test('a field the contract does not know fails it', () => {
  const body = { ...notebookBody(cells, 2, 3), surprise: true };
  assert.notDeepEqual(errors('CompleteRequest', body), []);
  assert.notDeepEqual(
    errors('CompleteRequest', { ...notebookBody(cells, 2, 3), max_tokens: MAX_TOKENS + 1 }),
    []
  );
});

test('the generated limits are the schema', () => {
  assert.equal(MAX_TOKENS, schema.$defs.CompleteRequest.properties.max_tokens.maximum);
});
