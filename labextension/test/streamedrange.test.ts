import assert from 'node:assert/strict';
import { test } from 'node:test';

import { StreamedRange, commonEnds } from '../src/streamedrange';

/** What the range shows after each piece. */
function shown(old: string, pieces: string[]): string[] {
  const range = new StreamedRange(old);
  return pieces.map(piece => range.write(piece));
}

test('a docstring grows above a body that stays as it was', () => {
  const old = 'def f(x):\n    return x * 2\n';
  const steps = shown(old, ['def f(x):\n', '    """Twice', ' x."""\n']);
  assert.deepEqual(steps, [
    old,
    'def f(x):\n    """Twice\n    return x * 2\n',
    'def f(x):\n    """Twice x."""\n    return x * 2\n'
  ]);
});

test('a fix passes the old line it changes once it reaches the next one it keeps', () => {
  const old = 'a = 1\nb = a +\nprint(b)\n';
  const steps = shown(old, ['a = 1\n', 'b = a + 1\n', 'print(b)\n']);
  // While the changed line is written, the old one still stands below it; then it is passed (deleted).
  assert.deepEqual(steps, [
    old,
    'a = 1\nb = a + 1\nb = a +\nprint(b)\n',
    'a = 1\nb = a + 1\nprint(b)\n'
  ]);
});

test('a line being written that the old one starts with shows as the old line, not as an insertion', () => {
  const old = 'total = 0\nfor v in values:\n    total += v\n';
  assert.deepEqual(shown(old, ['total = 0\nfor v', ' in items:']), [
    old,
    'total = 0\nfor v in items:\nfor v in values:\n    total += v\n'
  ]);
});

test('the new text alone once it has passed every old line', () => {
  const old = 'x = 1\n';
  assert.deepEqual(shown(old, ['x = 1\n', 'y = 2\n']), ['x = 1\n', 'x = 1\ny = 2\n']);
});

test('the common ends of two texts', () => {
  assert.deepEqual(commonEnds('abcXdef', 'abcYYdef'), { head: 3, tail: 3 });
  assert.deepEqual(commonEnds('same', 'same'), { head: 4, tail: 0 });
});
