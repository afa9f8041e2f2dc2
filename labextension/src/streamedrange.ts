/**
 * What an edit's range shows while its new text streams in (pure, no editor): the new text so far, then
 * the old lines it has not reached yet, as they were. Each new line that is an old one further down moves
 * past it, and the old lines skipped on the way are the deleted ones: a docstring grows above a body that
 * never leaves, and a fix marks only the lines it changes. The done event's replacement then is the
 * range's text, exactly.
 */

/** How long the start (`head`) and the end (`tail`) that `a` and `b` share are: between them, they differ. */
export function commonEnds(a: string, b: string): { head: number; tail: number } {
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) {
    head++;
  }
  let tail = 0;
  while (
    tail < a.length - head &&
    tail < b.length - head &&
    a[a.length - 1 - tail] === b[b.length - 1 - tail]
  ) {
    tail++;
  }
  return { head, tail };
}

/** The range's text while its new text is written: the new text, then the old lines it has not reached. */
export class StreamedRange {
  private readonly _old: string[];
  private _written = '';
  private _lines = 0; // of the new text's complete lines, how many were matched against the old ones
  private _next = 0; // the first old line the new text has not reached

  constructor(old: string) {
    this._old = old.split('\n');
  }

  /** The range's text once `text` more of the new text came. */
  write(text: string): string {
    this._written += text;
    const lines = this._written.split('\n');
    for (; this._lines < lines.length - 1; this._lines++) {
      this.reach(lines[this._lines]);
    }
    const written = this._written.slice(0, this._written.length - lines[lines.length - 1].length);
    const partial = lines[lines.length - 1];
    const rest = this._old.slice(this._next).join('\n');
    if (!partial || (this._old[this._next] ?? '').startsWith(partial)) {
      return written + rest; // (the old line below stands for the one being written, until it differs)
    }
    return written + partial + (this._next < this._old.length ? '\n' + rest : '');
  }

  /** A complete new line: where it is an old line further down, the old lines before it are passed. */
  private reach(line: string): void {
    if (!line.trim()) {
      if (this._next < this._old.length - 1 && !this._old[this._next].trim()) {
        this._next++;
      }
      return;
    }
    const found = this._old.indexOf(line, this._next);
    if (found >= 0) {
      this._next = found + 1;
    }
  }
}
