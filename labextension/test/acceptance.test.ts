import assert from 'node:assert/strict';
import { test } from 'node:test';

import { AcceptanceCounter, ICounted } from '../src/acceptance';

test('what becomes of the suggestions is counted by backend and route, each shown once', () => {
  const counter = new AcceptanceCounter();
  const line: ICounted = { route: 'line', backend: 'embedded' };
  const block: ICounted = { route: 'block', backend: 'embedded' };
  counter.shown(line);
  counter.shown(line); // still on screen, streaming
  counter.accepted(line, 12, 'whole');
  counter.shown(block);
  counter.accepted(block, 4, 'word');
  counter.accepted(block, 9, 'line');
  counter.dismissed(block);
  assert.deepEqual(counter.take(), [
    { backend: 'embedded', route: 'line', shown: 1, accepted: 1, chars_accepted: 12 },
    {
      backend: 'embedded',
      route: 'block',
      shown: 1,
      accepted_word: 1,
      accepted_line: 1,
      dismissed: 1,
      chars_accepted: 13
    }
  ]);
  assert.deepEqual(counter.take(), []); // reported once
});

test('a suggestion whose reply has not said who made it waits for the next report', () => {
  const counter = new AcceptanceCounter();
  const streaming: ICounted = {};
  counter.shown(streaming);
  assert.deepEqual(counter.take(), []);
  streaming.route = 'comment';
  streaming.backend = 'codestral';
  assert.deepEqual(counter.take(), [{ backend: 'codestral', route: 'comment', shown: 1 }]);
});
