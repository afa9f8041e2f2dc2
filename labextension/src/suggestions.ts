/**
 * Suggestions already made, and what they still offer as the user types.
 *
 * One store holds the recent suggestions of each document, the one still
 * streaming included. A keystroke that follows a suggestion (the text typed
 * since it was made is the start of it) is answered from it, without asking
 * the server: the rest stays on screen, and a suggestion still streaming goes
 * on streaming into it. Coming back to a place answered before (deleting a
 * character and typing it again) finds the answer the same way. Pure: no
 * JupyterLab imports, unit-tested in Node.
 */
import { RouteKind } from './contract';

/** Where a suggestion was made: the document's cell, the text around the cursor, the rest of the notebook. */
export interface IPlace {
  /** The document and the cell (its model id), or the file. */
  key: string;
  /** The cell's text before the cursor (code units, as the editor counts). */
  before: string;
  /** The cell's text after the cursor. */
  after: string;
  /** A hash of everything else the model saw (the other cells); when it changes, old answers are void. */
  context: string;
}

/** A suggestion: the place it was made for, its text so far, whether it is complete. */
export class Suggestion {
  text = '';
  done = false;
  /** The route and the backend that made it (its reply's), for the acceptance counts. */
  route?: RouteKind;
  backend?: string;
  /** Called with the full text so far at each change, and once more when done. */
  private _listeners = new Set<() => void>();

  constructor(readonly place: IPlace) {}

  update(text: string, done = false): void {
    this.text = text;
    this.done = this.done || done;
    this._listeners.forEach(listener => listener());
  }

  /** Listen to changes; returns a function that stops listening. */
  listen(listener: () => void): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** Resolves at the next change after which `until` holds (any change by default). */
  changed(until: () => boolean = () => true): Promise<void> {
    return new Promise(resolve => {
      const stop = this.listen(() => {
        if (until()) {
          stop();
          resolve();
        }
      });
    });
  }

  /** Size in characters, for the store's memory bound. */
  get size(): number {
    return this.place.before.length + this.place.after.length + this.text.length;
  }
}

/**
 * What is left of `suggestion` for the user at `place`, or null when the place
 * does not follow it: another cell, other text after the cursor, other cells
 * changed, or typed text that departs from the suggestion. An empty string
 * means the user typed all of it.
 */
export function typedAlong(suggestion: Suggestion, place: IPlace): string | null {
  const made = suggestion.place;
  if (made.key !== place.key || made.after !== place.after || made.context !== place.context) {
    return null;
  }
  if (!place.before.startsWith(made.before)) {
    return null;
  }
  const typed = place.before.slice(made.before.length);
  if (!suggestion.text.startsWith(typed)) {
    return null; // departed, or typed beyond what has streamed so far
  }
  return suggestion.text.slice(typed.length);
}

export interface IStoreLimits {
  /** Suggestions kept per document. */
  perDocument: number;
  /** Documents kept (the least recently used is forgotten first). */
  documents: number;
  /** Characters kept over all suggestions (their places and texts). */
  chars: number;
}

export const STORE_LIMITS: IStoreLimits = { perDocument: 32, documents: 16, chars: 1_000_000 };

/** The answer for a place: the suggestion it follows and what is left of it. */
export interface IFollow {
  suggestion: Suggestion;
  rest: string;
}

/** Recent suggestions per document, bounded in entries and memory. */
export class SuggestionStore {
  // Map iteration order is insertion order: re-inserting marks as recently used.
  private _documents = new Map<string, Suggestion[]>();
  private _chars = 0;
  private _counted = new Map<Suggestion, number>(); // the size each suggestion is counted at

  constructor(readonly limits: IStoreLimits = STORE_LIMITS) {}

  get size(): number {
    let n = 0;
    this._documents.forEach(list => (n += list.length));
    return n;
  }

  get chars(): number {
    return this._chars;
  }

  /**
   * The suggestion `place` follows, the one made closest to it first (the
   * longest `before`), if any still has something to show.
   */
  follow(document: string, place: IPlace): IFollow | null {
    const list = this._documents.get(document);
    if (!list) {
      return null;
    }
    if (list.length && list[0].place.context !== place.context) {
      // Another cell changed: what the model said before may not hold.
      this.forget(document);
      return null;
    }
    let best: IFollow | null = null;
    for (const suggestion of list) {
      const rest = typedAlong(suggestion, place);
      const useful = rest !== null && (rest.length > 0 || !suggestion.done);
      if (
        useful &&
        (!best || suggestion.place.before.length > best.suggestion.place.before.length)
      ) {
        best = { suggestion, rest: rest as string };
      }
    }
    if (best) {
      this._touch(document, list);
    }
    return best;
  }

  /** Keep a new suggestion (it may still be streaming). */
  add(document: string, suggestion: Suggestion): void {
    const list = this._documents.get(document) ?? [];
    if (list.length && list[0].place.context !== suggestion.place.context) {
      this.forget(document);
      return this.add(document, suggestion);
    }
    list.push(suggestion);
    this._count(suggestion);
    // A streaming suggestion grows: count its text again when it is done.
    const stop = suggestion.listen(() => {
      if (suggestion.done) {
        stop();
        if (this._counted.has(suggestion)) {
          this._count(suggestion);
          this._trim();
        }
      }
    });
    this._touch(document, list);
    while (list.length > this.limits.perDocument) {
      this._drop(list, 0);
    }
    this._trim();
  }

  /** Forget a suggestion that will not be completed (its request was aborted). */
  remove(document: string, suggestion: Suggestion): void {
    const list = this._documents.get(document);
    const index = list?.indexOf(suggestion) ?? -1;
    if (list && index >= 0) {
      this._drop(list, index);
    }
  }

  forget(document: string): void {
    const list = this._documents.get(document);
    while (list?.length) {
      this._drop(list, 0);
    }
    this._documents.delete(document);
  }

  private _touch(document: string, list: Suggestion[]): void {
    this._documents.delete(document);
    this._documents.set(document, list);
    while (this._documents.size > this.limits.documents) {
      this.forget(this._documents.keys().next().value as string);
    }
  }

  private _count(suggestion: Suggestion): void {
    this._chars += suggestion.size - (this._counted.get(suggestion) ?? 0);
    this._counted.set(suggestion, suggestion.size);
  }

  private _drop(list: Suggestion[], index: number): void {
    const [gone] = list.splice(index, 1);
    this._chars -= this._counted.get(gone) ?? 0;
    this._counted.delete(gone);
  }

  private _trim(): void {
    // The oldest suggestions of the least recently used documents go first.
    for (const [document, list] of this._documents) {
      while (this._chars > this.limits.chars && list.length) {
        this._drop(list, 0);
      }
      if (!list.length) {
        this._documents.delete(document);
      }
      if (this._chars <= this.limits.chars) {
        return;
      }
    }
  }
}

/** A short, stable hash of strings (FNV-1a, 32 bits, over UTF-16 code units), as a hex string. */
export function hashText(...parts: string[]): string {
  let h = 0x811c9dc5;
  for (const part of parts) {
    for (let i = 0; i < part.length; i++) {
      h ^= part.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
    h ^= 0xff; // a separator, so ("ab", "c") and ("a", "bc") differ
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0).toString(16).padStart(8, '0') + ':' + parts.reduce((n, p) => n + p.length, 0);
}
