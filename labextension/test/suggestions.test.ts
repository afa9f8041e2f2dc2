import { strict as assert } from 'node:assert';
import { test } from 'node:test';

import { nextLine, nextWord } from '../src/accept';
import { IPlace, Suggestion, SuggestionStore, hashText, typedAlong } from '../src/suggestions';
import {
  ENTER_PREFETCH_MS,
  KeyRhythm,
  adaptiveDelay,
  enteringPrefetchDelay,
  worthAsking
} from '../src/timing';

const at = (before: string, after = '', key = 'nb.ipynb#cell-1', context = 'ctx'): IPlace => ({
  key,
  before,
  after,
  context
});

function made(place: IPlace, text: string, done = true): Suggestion {
  const s = new Suggestion(place);
  s.update(text, done);
  return s;
}

test('typing along a suggestion leaves the rest of it', () => {
  const s = made(at('rates = '), 'survival_rate_by_class()');
  assert.equal(typedAlong(s, at('rates = ')), 'survival_rate_by_class()');
  assert.equal(typedAlong(s, at('rates = s')), 'urvival_rate_by_class()');
  assert.equal(typedAlong(s, at('rates = surv')), 'ival_rate_by_class()');
  assert.equal(typedAlong(s, at('rates = survival_rate_by_class()')), '');
  // Departing from it, or anything else changing, ends it.
  assert.equal(typedAlong(s, at('rates = surf')), null);
  assert.equal(typedAlong(s, at('rates =')), null);
  assert.equal(typedAlong(s, at('rates = surv', ')')), null);
  assert.equal(typedAlong(s, at('rates = surv', '', 'nb.ipynb#cell-2')), null);
  assert.equal(typedAlong(s, at('rates = surv', '', undefined, 'other')), null);
});

test('typing along works with characters beyond ASCII and outside the BMP', () => {
  const s = made(at('label = "'), 'température 🌡️ moyenne"');
  assert.equal(typedAlong(s, at('label = "temp')), 'érature 🌡️ moyenne"');
  assert.equal(typedAlong(s, at('label = "températ')), 'ure 🌡️ moyenne"');
  assert.equal(typedAlong(s, at('label = "température 🌡')), '️ moyenne"');
  assert.equal(typedAlong(s, at('label = "tempe')), null); // e is not é
});

test('a suggestion still streaming keeps streaming into what is left of it', () => {
  const s = new Suggestion(at('df.'));
  s.update('gro');
  assert.equal(typedAlong(s, at('df.g')), 'ro');
  assert.equal(typedAlong(s, at('df.grou')), null); // typed beyond what has arrived: unknown yet
  s.update('groupby("class")');
  assert.equal(typedAlong(s, at('df.grou')), 'pby("class")');
  const seen: string[] = [];
  s.listen(() => seen.push(s.text));
  s.update('groupby("class").mean()', true);
  assert.deepEqual(seen, ['groupby("class").mean()']);
  assert.equal(s.done, true);
});

test('waiting for a change resolves at the first change that satisfies the condition', async () => {
  const s = new Suggestion(at('x = '));
  const seen: string[] = [];
  const anyChange = s.changed().then(() => seen.push(`any:${s.text}`));
  const someText = s.changed(() => s.text.length >= 3).then(() => seen.push(`text:${s.text}`));
  s.update('f');
  await anyChange;
  s.update('f(1');
  await someText;
  assert.deepEqual(seen, ['any:f', 'text:f(1']);
});

test('the store answers from the suggestion made closest to the cursor', () => {
  const store = new SuggestionStore();
  store.add('nb', made(at('x = '), 'compute(a, b)'));
  store.add('nb', made(at('x = compute('), 'alpha, beta)'));
  assert.equal(store.follow('nb', at('x = compute(al'))?.rest, 'pha, beta)');
  assert.equal(store.follow('nb', at('x = com'))?.rest, 'pute(a, b)');
  assert.equal(store.follow('nb', at('y = ')), null);
  // Deleting the last character and typing it again: the same answer, from the store.
  assert.equal(store.follow('nb', at('x = compute(a'))?.rest, 'lpha, beta)');
  // Typed to its end: nothing left to show, so no answer (ask the server).
  assert.equal(store.follow('nb', at('x = compute(alpha, beta)')), null);
});

test('a change in another cell empties the document', () => {
  const store = new SuggestionStore();
  store.add('nb', made(at('x = '), 'compute()'));
  store.add('other', made(at('y = ', '', 'other#c'), 'twice()'));
  assert.equal(store.follow('nb', at('x = ', '', undefined, 'changed')), null);
  assert.equal(store.size, 1);
  assert.equal(store.follow('other', at('y = ', '', 'other#c'))?.rest, 'twice()');
});

test('the store is bounded in entries per document, documents and characters', () => {
  const store = new SuggestionStore({ perDocument: 3, documents: 2, chars: 200 });
  for (let i = 0; i < 5; i++) {
    store.add('a', made(at(`v${i} = `), `f(${i})`));
  }
  assert.equal(store.size, 3);
  assert.equal(store.follow('a', at('v0 = ')), null); // the oldest went first
  assert.equal(store.follow('a', at('v4 = '))?.rest, 'f(4)');
  store.add('b', made(at('b = ', '', 'b#c'), 'g()'));
  store.add('c', made(at('c = ', '', 'c#c'), 'h()'));
  assert.equal(store.follow('a', at('v4 = ')), null); // 'a' was the least recently used
  store.add('c', made(at('long = ', '', 'c#c'), 'x'.repeat(190)));
  assert.ok(store.chars <= 200, String(store.chars));
  // A streaming suggestion is counted as it grows, when done.
  const growing = new Suggestion(at('s = ', '', 'c#c'));
  store.add('c', growing);
  growing.update('y'.repeat(300), true);
  assert.ok(store.chars <= 200, String(store.chars));
});

test('an aborted suggestion can be removed', () => {
  const store = new SuggestionStore();
  const s = new Suggestion(at('x = '));
  store.add('nb', s);
  s.update('par');
  store.remove('nb', s);
  assert.equal(store.follow('nb', at('x = ')), null);
  assert.equal(store.chars, 0);
});

test('hashes are short, stable and tell the parts apart', () => {
  assert.equal(hashText('ab', 'c'), hashText('ab', 'c'));
  assert.notEqual(hashText('ab', 'c'), hashText('a', 'bc'));
  assert.match(hashText('x'.repeat(100_000)), /^[0-9a-f]{8}:100000$/);
});

test('the next word: a name, a number, or one run of punctuation', () => {
  assert.equal(nextWord('ival_rate_by_class()'), 'ival_rate_by_class');
  assert.equal(nextWord('()'), '(');
  assert.equal(nextWord('(df, axis=1)'), '(');
  assert.equal(nextWord(' == 3'), ' ==');
  assert.equal(nextWord('  + 2'), '  +');
  assert.equal(nextWord('.mean()'), '.');
  assert.equal(nextWord('"tempé rature"'), '"');
  assert.equal(nextWord('températures_moyennes)'), 'températures_moyennes');
  assert.equal(nextWord('3.14)'), '3');
  assert.equal(nextWord('\n    return x'), '\n');
  assert.equal(nextWord('    return x'), '    return');
  assert.equal(nextWord('   \nnext'), '   ');
  assert.equal(nextWord(''), '');
});

test('the next line: up to and with its line break', () => {
  assert.equal(nextLine('sum()\nprint(total)'), 'sum()\n');
  assert.equal(nextLine('sum()'), 'sum()');
  assert.equal(nextLine('\n    return x\n'), '\n    return x\n');
  assert.equal(nextLine('    for row in rows:\n        pass'), '    for row in rows:\n');
});

test('no automatic request in the middle of a word or after a skipped character', () => {
  assert.equal(worthAsking('df.gro', 'upby()', []), false);
  assert.equal(worthAsking('df.gro', '', []), true);
  assert.equal(worthAsking('print(', ')', []), true);
  assert.equal(worthAsking('x = 1;', '', [';']), false);
  assert.equal(worthAsking('name = "é', 'té"', []), false);
  assert.equal(worthAsking('', '', [';']), true);
});

test('the adaptive delay waits less when the backend answers fast', () => {
  // A user typing a key every 200 ms, the core's debounce at 200 ms.
  assert.equal(adaptiveDelay(200, 80, 200), 100); // fast backend: 1.5 x 200 = 300 ms in all
  assert.equal(adaptiveDelay(200, 700, 200), 500); // slow backend: 700 ms in all
  assert.equal(adaptiveDelay(200, 5000, 200), 800); // at most 1,000 ms in all
  assert.equal(adaptiveDelay(null, null, 200), 0); // nothing measured yet: the core's delay alone
  assert.equal(adaptiveDelay(60, 50, 0), 100); // at least 100 ms in all
});

test('a cell entered by a run (Shift+Enter) is read at once, a cell passed through only after a pause', () => {
  assert.equal(enteringPrefetchDelay(2), 0); // the run moved the cursor here: the user writes next
  assert.equal(enteringPrefetchDelay(null), ENTER_PREFETCH_MS); // arrow keys or a click
  assert.equal(enteringPrefetchDelay(5000), ENTER_PREFETCH_MS); // a run long ago
  assert.ok(ENTER_PREFETCH_MS > 0);
});

test('the key rhythm is the median gap between keys, pauses left out', () => {
  const rhythm = new KeyRhythm();
  assert.equal(rhythm.gapMs, null);
  for (const t of [0, 200, 380, 600, 5000, 5210, 5400]) {
    rhythm.note(t);
  }
  assert.equal(rhythm.gapMs, 200);
});
