import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ISignal, Signal } from '@lumino/signaling';

import { AcceptanceCounter } from './acceptance';
import { CodestralClient } from './client';
import { CompleteRequest, OffScope, StreamEvent } from './contract';
import {
  CompletionFailure,
  ErrorGate,
  IRequestOptions,
  LatestRequest,
  isDone,
  isError
} from './protocol';
import {
  DEFAULT_DEBOUNCE_MS,
  DEFAULT_SETTINGS,
  ICodestralSettings,
  ProviderSettings,
  settingsSchema
} from './settings';
import { IPlace, Suggestion, SuggestionStore, typedAlong } from './suggestions';
import { Targets } from './target';
import { KeyRhythm, adaptiveDelay, median, worthAsking } from './timing';

export interface IActivity {
  /** 'off': no completion here, by the notebook's settings or the course policy (`offScope` says which). */
  state: 'idle' | 'working' | 'error' | 'off';
  message?: string;
  offScope?: OffScope;
  firstTokenMs?: number;
  /** With several backends: the one that answered. */
  backend?: string;
  retryAfter?: number;
}

/**
 * The inline completion provider: asks `codestral/complete` and streams the
 * text into JupyterLab's ghost text as it arrives. JupyterLab's completer
 * debounces the requests and turns the provider on and off (its settings,
 * with ours, are in the Settings Editor under "Inline Completer").
 */
export class CodestralProvider implements IInlineCompletionProvider {
  readonly identifier = 'jupyter-codestral';
  readonly name = 'Codestral';
  settings: ICodestralSettings = { ...DEFAULT_SETTINGS };
  /** The core's switch for this provider (it also stops the core from asking us). */
  enabled = true;

  private _client: CodestralClient;
  /** What to ask the server about a document: the completions' requests, and the edits'. */
  readonly targets: Targets;
  /** Requests sent, and keystrokes answered from a suggestion instead (for tests and the status). */
  requests = 0;
  followed = 0;
  private _store = new SuggestionStore();
  private _follows = new Map<string, { suggestion: Suggestion; typed: number; shown: string }>();
  private _failures = new Map<Suggestion, CompletionFailure>();
  private _tokens = 0;
  private _fetches = 0;
  private _latencies: number[] = [];
  private _coreDelay = DEFAULT_DEBOUNCE_MS;
  /** The user's typing rhythm (fed by the plugin with every keystroke in an editor). */
  readonly rhythm = new KeyRhythm();
  private _latest = new LatestRequest();
  private _errors = new ErrorGate();
  private _blockedUntil = 0;
  private _prefetching: AbortController | null = null;
  private _activity = new Signal<this, IActivity>(this);
  /** What becomes of the suggestions shown (reported to the server by the plugin). */
  readonly acceptance = new AcceptanceCounter();
  /** The suggestion on screen, and how much of it was typed when it was put there. */
  private _displayed: { suggestion: Suggestion; typed: number } | null = null;

  constructor(client: CodestralClient, languages: IEditorLanguageRegistry | null = null) {
    this._client = client;
    this.targets = new Targets(languages);
  }

  get schema(): ISettingRegistry.IProperty {
    return settingsSchema();
  }

  configure(settings: ProviderSettings): void {
    const { enabled, debouncerDelay, ...ours } = settings;
    this.enabled = enabled ?? true;
    this._coreDelay = debouncerDelay ?? DEFAULT_DEBOUNCE_MS;
    this.settings = { ...DEFAULT_SETTINGS, ...ours };
  }

  /** The core's debounce delay for this provider (ms). */
  get debounceMs(): number {
    return this._coreDelay;
  }

  /** Emitted when a completion starts, ends or fails (for the status bar). */
  get activity(): ISignal<this, IActivity> {
    return this._activity;
  }

  private options(): IRequestOptions {
    return {
      maxTokens: this.settings.maxTokens,
      singleLine: this.settings.lineMode === 'single'
    };
  }

  async fetch(
    request: CompletionHandler.IRequest,
    context: IInlineCompletionContext
  ): Promise<IInlineCompletionList<IInlineCompletionItem>> {
    const nothing = { items: [] };
    if (!this.enabled) {
      // The core skips a disabled provider once its setting is saved; this
      // takes effect at the click, before that round trip.
      return nothing;
    }
    const fetchTicket = ++this._fetches;
    const automatic = context.triggerKind === InlineCompletionTriggerKind.Automatic;
    if (automatic && this.settings.trigger === 'manual') {
      return nothing;
    }
    // The request comes from the active cell's editor, now: its model id
    // says which cell it is, whatever text the others hold.
    const target = this.targets.of(context.widget, request, this.options());
    if (!target) {
      return nothing;
    }
    if (this.settings.skipLanguages.includes(target.body.language ?? '')) {
      if (target.body.language === 'markdown' && context.widget instanceof NotebookPanel) {
        this.prefetch(context.widget); // the markdown written so far, read for the code cell after it
      }
      return nothing;
    }
    // Typing along a suggestion, or back at a place answered before: answer
    // from it, without asking the server (a streaming one goes on streaming).
    const followed = this._store.follow(target.document, target.place);
    if (followed) {
      this.followed++;
      return { items: [this._item(followed.suggestion, target.place)] };
    }
    this._leave(target.place);
    if (automatic) {
      if (Date.now() < this._blockedUntil) {
        return nothing; // rate limited: the status bar says until when
      }
      const lineBefore = target.place.before.slice(target.place.before.lastIndexOf('\n') + 1);
      const lineAfter = target.place.after.split('\n', 1)[0];
      if (!worthAsking(lineBefore, lineAfter, this.settings.skipAfter)) {
        return nothing;
      }
      const wait = this.settings.adaptiveDebounce
        ? adaptiveDelay(this.rhythm.gapMs, median(this._latencies), this._coreDelay)
        : 0;
      if (wait > 0) {
        await new Promise(resolve => setTimeout(resolve, wait));
        if (fetchTicket !== this._fetches) {
          return nothing; // another keystroke came meanwhile
        }
      }
    }
    // A newer request makes the one in flight useless: abort it, so the
    // server stops the backend too.
    const { signal } = this._latest.begin();
    const suggestion = new Suggestion(target.place);
    this._store.add(target.document, suggestion);
    this.requests++;
    void this._pump(this._client.complete(target.body, signal), suggestion, target.document);
    // Until its first text there is nothing to show (an empty ghost would linger when the
    // answer is empty, an error or "off here").
    if (!suggestion.text && !suggestion.done) {
      await suggestion.changed(() => !!suggestion.text || suggestion.done);
    }
    const failure = this._failures.get(suggestion);
    if (failure) {
      this._failures.delete(suggestion); // shown once, by the completer's own error display
      return { items: [{ insertText: '', error: { message: failure.message } }] };
    }
    if (!suggestion.text) {
      return nothing;
    }
    return { items: [this._item(suggestion, target.place)] };
  }

  /** An item of the core's list for `suggestion` as seen from `place` (streamed from it by token). */
  private _item(suggestion: Suggestion, place: IPlace): IInlineCompletionItem {
    const typed = place.before.length - suggestion.place.before.length;
    const token = `codestral-${++this._tokens}`;
    const insertText = suggestion.text.slice(typed);
    this._follows.set(token, { suggestion, typed, shown: insertText });
    this._show(suggestion, typed, insertText);
    return { insertText, isIncomplete: !suggestion.done, token };
  }

  /** `suggestion` is on screen from `typed` characters on (once it has text). */
  private _show(suggestion: Suggestion, typed: number, rest: string): void {
    if (rest) {
      this._displayed = { suggestion, typed };
      this.acceptance.shown(suggestion);
    }
  }

  /** The suggestion on screen gives way to another request at `place`: it was typed over (unless typed to its end). */
  private _leave(place: IPlace): void {
    const displayed = this._displayed;
    this._displayed = null;
    if (displayed && typedAlong(displayed.suggestion, place) !== '') {
      this.acceptance.dismissed(displayed.suggestion);
    }
  }

  /** The user accepted the suggestion on screen: whole (Tab), or its next word or line (`chars` of it). */
  accepted(how: 'whole' | 'word' | 'line', chars?: number): void {
    const displayed = this._displayed;
    if (!displayed) {
      return;
    }
    const rest = displayed.suggestion.text.slice(displayed.typed);
    this.acceptance.accepted(displayed.suggestion, chars ?? rest.length, how);
    if (how === 'whole') {
      this._displayed = null;
    }
  }

  /** The user dismissed the suggestion on screen (Escape). */
  dismissed(): void {
    const displayed = this._displayed;
    this._displayed = null;
    if (displayed) {
      this.acceptance.dismissed(displayed.suggestion);
    }
  }

  /** Read a request's events into its suggestion, whoever shows it (the stream is not the core's to stop). */
  private async _pump(
    events: AsyncGenerator<StreamEvent>,
    suggestion: Suggestion,
    document: string
  ): Promise<void> {
    let text = '';
    this._activity.emit({ state: 'working' });
    try {
      for await (const event of events) {
        if (isError(event)) {
          const { kind, message, retry_after } = event.error;
          throw new CompletionFailure(kind, message, retry_after);
        }
        if (!isDone(event)) {
          text += event.delta;
          suggestion.update(text);
          continue;
        }
        if (event.off) {
          this._store.remove(document, suggestion);
          suggestion.update('', true);
          this._activity.emit({ state: 'off', message: event.off, offScope: event.off_scope });
          return;
        }
        this._errors.reset();
        const firstTokenMs = event.timings.first_token_ms;
        if (typeof firstTokenMs === 'number') {
          this._latencies.push(firstTokenMs);
          this._latencies.splice(0, this._latencies.length - 20);
        }
        this._activity.emit({ state: 'idle', firstTokenMs, backend: event.backend });
        suggestion.route = event.route;
        suggestion.backend = event.backend;
        suggestion.update(event.completion, true);
        return;
      }
      // Aborted by a newer request: it will never be complete, so it answers nothing later.
      this._store.remove(document, suggestion);
      suggestion.update(text, true);
      this._activity.emit({ state: 'idle' });
    } catch (error) {
      this._store.remove(document, suggestion);
      const failure =
        error instanceof CompletionFailure ? error : new CompletionFailure('failed', String(error));
      if (failure.kind === 'cancelled') {
        this._activity.emit({ state: 'idle' });
      } else if (failure.kind === 'policy') {
        // The course policy: not an error to show in the editor, a state for the bar.
        this._activity.emit({ state: 'off', message: failure.message, offScope: 'course_policy' });
      } else {
        if (failure.retryAfter) {
          this._blockedUntil = Date.now() + failure.retryAfter * 1000;
        }
        this._activity.emit({
          state: 'error',
          message: failure.message,
          retryAfter: failure.retryAfter
        });
        if (this._errors.shouldShow({ kind: failure.kind, message: failure.message })) {
          this._failures.set(suggestion, failure);
        }
      }
      suggestion.update(text, true);
    }
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const follow = this._follows.get(token);
    this._follows.delete(token);
    if (!follow) {
      return;
    }
    const { suggestion, typed } = follow;
    let shown = follow.shown;
    for (;;) {
      const rest = suggestion.text.slice(typed);
      const failure = this._failures.get(suggestion);
      if (failure) {
        this._failures.delete(suggestion); // shown once
        yield {
          response: { insertText: rest, isIncomplete: false, error: { message: failure.message } }
        };
        return;
      }
      if (rest !== shown || suggestion.done) {
        shown = rest;
        this._show(suggestion, typed, rest);
        yield { response: { insertText: rest, isIncomplete: !suggestion.done } };
      }
      if (suggestion.done) {
        return;
      }
      await suggestion.changed();
    }
  }

  /** What is left of our suggestion on screen at the cursor of `editor`'s document, if any. */
  visibleRest(widget: unknown, text: string, offset: number): string | null {
    const target = this.targets.of(widget, { text, offset }, this.options());
    if (!target) {
      return null;
    }
    return this._store.follow(target.document, target.place)?.rest ?? null;
  }

  /**
   * Let the model read the prompt of the active cell of `panel` ahead of the first keystroke, with
   * the cursor where it is (entering a cell by the arrow keys puts it at the start); in a markdown
   * cell, the prompt of the code cell after it, so that the markdown written is read by then.
   */
  prefetch(panel: NotebookPanel): void {
    if (!this.enabled || !this.settings.prefetch) {
      return;
    }
    const cell = panel.content.activeCell;
    const options = { ...this.options(), prefetch: true };
    let body: CompleteRequest | null | undefined = null;
    if (cell?.model.type === 'code') {
      const text = cell.model.sharedModel.getSource();
      const editor = cell.editor;
      const offset = editor ? editor.getOffsetAt(editor.getCursorPosition()) : text.length;
      body = this.targets.of(panel, { text, offset }, options, cell.model.id)?.body;
    } else if (cell?.model.type === 'markdown') {
      body = this.targets.after(panel, cell.model.id, options);
    }
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return;
    }
    this._prefetching?.abort();
    this._prefetching = new AbortController();
    void this._client.prefetch(body, this._prefetching.signal);
  }
}
