/**
 * An edit's change shown in the cell's own editor as it streams in: the new text is written in place
 * of the range, and @codemirror/merge's unified view marks what it inserts and shows what it deletes
 * (with its per-chunk accept and reject buttons). Tab or Enter keeps the change, Escape brings the
 * range back; while the diff is shown the user cannot type into the cell, so the range stays where
 * the server's answer expects it.
 *
 * While the new text is written, the old lines it has not reached stay below it (streamedrange.ts).
 *
 * The cell's undo history (its shared model's Yjs UndoManager, not CodeMirror's) gets one step for an
 * accepted edit and none for a rejected one: the streamed steps are undone before the end, and an
 * accepted text is written again as one change.
 */
import { getChunks, unifiedMergeView } from '@codemirror/merge';
import { Compartment, EditorState, Prec, StateEffect, Text } from '@codemirror/state';
import { EditorView } from '@codemirror/view';

import { StreamedRange, commonEnds } from './streamedrange';

/** The class the editor carries while a diff is shown (the plugin's commands and styles look for it). */
export const DIFF_CLASS = 'jp-mod-codestral-edit';

/** What the keys do: the session decides (accept and reject also end the stream, when it still runs). */
export interface IDiffKeys {
  accept(): void;
  reject(): void;
  /** The document or the diff's original changed (a chunk accepted or rejected by its button). */
  changed(): void;
}

/** The part of a cell's undo history (Yjs's UndoManager, the shared model's) the diff uses. */
export interface IUndoHistory {
  readonly undoStack: readonly unknown[];
  undo(): unknown;
  /** The next change starts an undo step of its own (not merged with the one before). */
  stopCapturing(): void;
  clear(clearUndoStack?: boolean, clearRedoStack?: boolean): void;
}

// One compartment per editor, made the first time it shows a diff: later diffs reconfigure it.
const compartments = new WeakMap<EditorView, Compartment>();

function compartment(view: EditorView): Compartment {
  let found = compartments.get(view);
  if (!found) {
    found = new Compartment();
    compartments.set(view, found);
    view.dispatch({ effects: StateEffect.appendConfig.of(found.of([])) });
  }
  return found;
}

export class InlineDiff {
  private readonly _original: Text;
  private readonly _start: number;
  private _end: number;
  private readonly _streamed: StreamedRange;
  private readonly _historyStart: number;
  private _closed = false;

  /** `start`/`end`: the range the edit replaces, in the editor's offsets. */
  constructor(
    private readonly _view: EditorView,
    start: number,
    end: number,
    keys: IDiffKeys,
    private readonly _history: IUndoHistory | null = null
  ) {
    this._original = _view.state.doc;
    // The streamed steps start a step of their own, so that unwinding them leaves the user's alone.
    _history?.stopCapturing();
    this._historyStart = _history?.undoStack.length ?? 0;
    this._start = start;
    this._end = end;
    this._streamed = new StreamedRange(this._original.sliceString(start, end));
    const onKey = EditorView.domEventHandlers({
      keydown: event => {
        const action =
          event.key === 'Escape'
            ? keys.reject
            : (event.key === 'Tab' || event.key === 'Enter') && !event.shiftKey
              ? keys.accept
              : null;
        if (!action || event.ctrlKey || event.altKey || event.metaKey) {
          return false;
        }
        // Before JupyterLab's own bindings (Escape leaves edit mode, Tab would indent).
        event.preventDefault();
        event.stopPropagation();
        action();
        return true;
      }
    });
    _view.dispatch({
      effects: compartment(_view).reconfigure([
        unifiedMergeView({ original: this._original, gutter: true, mergeControls: true }),
        EditorState.readOnly.of(true),
        EditorView.editorAttributes.of({ class: DIFF_CLASS }),
        EditorView.updateListener.of(update => {
          if (update.docChanged || update.transactions.some(t => t.effects.length)) {
            // Not while the editor updates: the session may end the diff in answer.
            queueMicrotask(() => keys.changed());
          }
        }),
        Prec.highest(onKey)
      ])
    });
  }

  /** The range's new text grew by `text`. */
  write(text: string): void {
    if (!this._closed && text) {
      this.show(this._streamed.write(text));
    }
  }

  /** The new text is whole: the range is `replacement`, and the old lines left below it go. */
  finish(replacement: string): void {
    if (!this._closed) {
      this.show(replacement);
    }
  }

  /** The range's text becomes `text`. */
  private show(text: string): void {
    this.replace(this._start, this._end, text);
    this._end = this._start + text.length;
  }

  /** The document from `from` to `to` becomes `text`: only the part that differs is written. */
  private replace(from: number, to: number, text: string): void {
    const now = this._view.state.sliceDoc(from, to);
    const { head, tail } = commonEnds(now, text);
    if (head < now.length - tail || head < text.length - tail) {
      this._view.dispatch({
        changes: { from: from + head, to: to - tail, insert: text.slice(head, text.length - tail) },
        userEvent: 'input.codestral'
      });
    }
  }

  /** How many changed chunks are left to accept or reject (none once each was decided). */
  get chunks(): number {
    return getChunks(this._view.state)?.chunks.length ?? 0;
  }

  /** The cell's text as it stands (with the chunks rejected one by one already back). */
  get text(): string {
    return this._view.state.doc.toString();
  }

  get original(): string {
    return this._original.toString();
  }

  /** Keep the document as it is: the diff goes, the change stays, one undo step. */
  accept(): void {
    if (this._closed) {
      return;
    }
    const text = this.text;
    if (this.unwind()) {
      this._history?.stopCapturing();
      this.replace(0, this._view.state.doc.length, text);
      this._history?.stopCapturing(); // the user's next keys are a step of their own
    }
    this.close();
  }

  /** Bring back the text the cell had (the chunks decided by their buttons included); no undo step. */
  reject(): void {
    if (this._closed) {
      return;
    }
    this.unwind();
    this.replace(0, this._view.state.doc.length, this._original.toString());
    this.close();
  }

  /** Undo the steps written since the diff began (and forget them as redo steps). False without a history. */
  private unwind(): boolean {
    const history = this._history;
    if (!history) {
      return false;
    }
    while (history.undoStack.length > this._historyStart) {
      history.undo();
    }
    history.clear(false, true);
    return true;
  }

  get closed(): boolean {
    return this._closed;
  }

  private close(): void {
    if (this._closed) {
      return;
    }
    this._closed = true;
    const found = compartments.get(this._view);
    if (found) {
      this._view.dispatch({ effects: found.reconfigure([]) });
    }
  }
}
