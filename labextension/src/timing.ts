/**
 * When to ask: not in the middle of a word or right after a character the user chose, and after
 * a delay that follows the user's rhythm and the backend's speed. Pure: unit-tested in Node.
 */

import { WORD } from './accept';

/**
 * Whether an automatic request makes sense at this cursor: not in the middle
 * of a word (a character of a name right after the cursor), not right after
 * one of `skipAfter`.
 */
export function worthAsking(lineBefore: string, lineAfter: string, skipAfter: string[]): boolean {
  const next = Array.from(lineAfter)[0];
  if (next !== undefined && WORD.test(next)) {
    return false;
  }
  const previous = Array.from(lineBefore).pop();
  return !(previous !== undefined && skipAfter.includes(previous));
}

/**
 * How long to wait after a keystroke before asking, beyond what the core's
 * debouncer already waited (`coreDelayMs`). In all: at least one and a half
 * times the user's usual gap between keys (a shorter gap is not a pause: the
 * next key is coming), and as long as the backend takes to answer (a slow
 * backend's answer to a brief pause would be thrown away by the next key),
 * within `min`..`max` ms. So it waits less when the backend answers fast.
 */
export function adaptiveDelay(
  keyGapMs: number | null,
  expectedLatencyMs: number | null,
  coreDelayMs: number,
  min = 100,
  max = 1000
): number {
  const wanted = Math.max(1.5 * (keyGapMs ?? 0), expectedLatencyMs ?? 0);
  const target = Math.min(max, Math.max(min, wanted));
  return Math.max(0, Math.round(target - coreDelayMs));
}

/** The user's usual gap between keystrokes (the median of recent ones, pauses left out). */
export class KeyRhythm {
  private _gaps: number[] = [];
  private _last = 0;

  constructor(
    readonly pauseMs = 1000,
    readonly window = 30
  ) {}

  note(now: number): void {
    const gap = now - this._last;
    this._last = now;
    if (gap > 0 && gap < this.pauseMs) {
      this._gaps.push(gap);
      this._gaps.splice(0, this._gaps.length - this.window);
    }
  }

  get gapMs(): number | null {
    if (this._gaps.length < 3) {
      return null;
    }
    return median(this._gaps);
  }
}

/** The middle value of `values` (the upper one of an even count), or null when there are none. */
export function median(values: number[]): number | null {
  if (!values.length) {
    return null;
  }
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Entering a cell: its prompt is read ahead after this delay, so that a cursor passing through cells asks for nothing. */
export const ENTER_PREFETCH_MS = 300;
/** A run moves the cursor on in the same task as it is scheduled (Shift+Enter); this is ample. */
const RUN_THEN_ENTER_MS = 100;

/**
 * The delay before the prefetch of a cell the cursor just entered (ms since a
 * run was last scheduled or a cell was run; null: none yet). A run that moved
 * the cursor there (Shift+Enter) says the user is about to write in it, and the
 * cell just left, likely new to the model, must be read first: at once.
 */
export function enteringPrefetchDelay(msSinceRun: number | null): number {
  return msSinceRun !== null && msSinceRun >= 0 && msSinceRun < RUN_THEN_ENTER_MS
    ? 0
    : ENTER_PREFETCH_MS;
}
