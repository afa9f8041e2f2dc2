import { CodeCell } from '@jupyterlab/cells';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import { IDocumentWidget } from '@jupyterlab/docregistry';
import { FileEditor } from '@jupyterlab/fileeditor';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ISignal, Signal } from '@lumino/signaling';

import { CodestralClient } from './client';
import {
  CompletionFailure,
  ErrorGate,
  ICompletionBody,
  INotebookCell,
  INotebookSettings,
  IRequestOptions,
  IStreamEvent,
  LatestRequest,
  fileBody,
  notebookRequestBody,
  serverLanguage
} from './protocol';
import {
  IPlace,
  Suggestion,
  SuggestionStore,
  KeyRhythm,
  adaptiveDelay,
  hashText,
  worthAsking
} from './suggestions';

/** Our part of the inline completer's settings (besides the core's own: enabled, debounce, timeout). */
export interface ICodestralSettings {
  trigger: 'automatic' | 'manual';
  maxTokens: number;
  lineMode: 'multi' | 'single';
  skipLanguages: string[];
  prefetch: boolean;
  skipAfter: string[];
  adaptiveDebounce: boolean;
}

export const DEFAULT_SETTINGS: ICodestralSettings = {
  trigger: 'automatic',
  maxTokens: 128,
  lineMode: 'multi',
  skipLanguages: ['markdown'],
  prefetch: true,
  skipAfter: [';'],
  adaptiveDebounce: true
};

/** A request to make, or to answer from a suggestion: its body, its document and the cursor's place. */
export interface ITarget {
  body: ICompletionBody;
  document: string;
  place: IPlace;
}

export interface IActivity {
  /** 'off': no completion here, by the notebook's settings or the course policy (`message` says which). */
  state: 'idle' | 'working' | 'error' | 'off';
  message?: string;
  firstTokenMs?: number;
  /** With several backends: the one that answered. */
  backend?: string;
  retryAfter?: number;
}

/** The cells of a notebook as the server wants them, each with its model's id. */
function notebookCells(panel: NotebookPanel): INotebookCell[] {
  return panel.content.widgets.map(cell => {
    const entry: INotebookCell = {
      id: cell.model.id,
      cell_type: cell.model.type as INotebookCell['cell_type'],
      source: cell.model.sharedModel.getSource()
    };
    // Which kernel snapshot shows what the cell produced (the server's namespace.py).
    const count = cell instanceof CodeCell ? cell.model.executionCount : null;
    if (typeof count === 'number') {
      entry.execution_count = count;
    }
    // The server honours `no-completion` and `no-context` (policy.py).
    const tags = cell.model.getMetadata('tags');
    if (Array.isArray(tags) && tags.length) {
      entry.metadata = { tags: tags.filter((t): t is string => typeof t === 'string') };
    }
    return entry;
  });
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
  private _languages: IEditorLanguageRegistry | null;
  /** Requests sent, and keystrokes answered from a suggestion instead (for tests and the status). */
  requests = 0;
  followed = 0;
  private _store = new SuggestionStore();
  private _follows = new Map<string, { suggestion: Suggestion; typed: number; shown: string }>();
  private _failures = new Map<Suggestion, CompletionFailure>();
  private _tokens = 0;
  private _fetches = 0;
  private _latencies: number[] = [];
  private _coreDelay = 200;
  /** The user's typing rhythm (fed by the plugin with every keystroke in an editor). */
  readonly rhythm = new KeyRhythm();
  private _latest = new LatestRequest();
  private _errors = new ErrorGate();
  private _blockedUntil = 0;
  private _prefetching: AbortController | null = null;
  private _activity = new Signal<this, IActivity>(this);

  constructor(client: CodestralClient, languages: IEditorLanguageRegistry | null = null) {
    this._client = client;
    this._languages = languages;
  }

  get schema(): ISettingRegistry.IProperty {
    return {
      properties: {
        trigger: {
          title: 'Trigger',
          description: "'automatic': while you type; 'manual': only when you ask (Alt+\\).",
          type: 'string',
          enum: ['automatic', 'manual']
        },
        maxTokens: {
          title: 'Maximum completion length (tokens)',
          type: 'number',
          minimum: 1,
          maximum: 1024
        },
        lineMode: {
          title: 'Line mode',
          description:
            "'multi': complete whole blocks; 'single': one line at a time. Mid-line completions are always single-line.",
          type: 'string',
          enum: ['multi', 'single']
        },
        skipLanguages: {
          title: 'Languages without completions',
          description: 'Cell or file languages in which no completion is requested.',
          type: 'array',
          items: { type: 'string' }
        },
        skipAfter: {
          title: 'No automatic request right after',
          description:
            'Characters after which no completion is requested while typing (it still is when you ask, Alt+\\).',
          type: 'array',
          items: { type: 'string' }
        },
        adaptiveDebounce: {
          title: 'Adaptive delay',
          description:
            'Wait longer than the debounce delay when you type slowly or the backend answers slowly, so fewer requests are thrown away (at most 1 s in all).',
          type: 'boolean'
        },
        prefetch: {
          title: 'Warm up on cell entry',
          description:
            'When the cursor enters a code cell, or a cell has run, let the model read the notebook ahead of the first keystroke (local models).',
          type: 'boolean'
        }
      },
      default: {
        enabled: true,
        // The server answers from a warm cache in well under this: wait for
        // a pause in typing, not for every keystroke.
        debouncerDelay: 200,
        timeout: 20000,
        autoFillInMiddle: true,
        ...DEFAULT_SETTINGS
      }
    };
  }

  configure(
    settings: Partial<ICodestralSettings> & { enabled?: boolean; debouncerDelay?: number }
  ): void {
    const { enabled, debouncerDelay, ...ours } = settings;
    this.enabled = enabled ?? true;
    this._coreDelay = debouncerDelay ?? 200;
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

  private language(
    name: string | undefined,
    mimeType: string | undefined,
    fallback: string
  ): string {
    const found = mimeType ? this._languages?.findByMIME(mimeType)?.name : undefined;
    return serverLanguage(name ?? found, fallback);
  }

  /**
   * The request for the document the completer is in: its body, the
   * document's id and the place of the cursor (for the suggestion store), or
   * null when there is nothing to ask.
   */
  documentBody(
    widget: unknown,
    request: CompletionHandler.IRequest,
    options: IRequestOptions,
    cellId?: string
  ): ITarget | null {
    const before = request.text.slice(0, request.offset);
    const after = request.text.slice(request.offset);
    if (widget instanceof NotebookPanel) {
      const id = cellId ?? widget.content.activeCell?.model.id;
      if (!id) {
        return null;
      }
      const cells = notebookCells(widget);
      const cell = cells.find(c => c.id === id);
      const kernelLanguage = (
        widget.model?.metadata?.language_info as { name?: string } | undefined
      )?.name;
      const language =
        cell?.cell_type === 'markdown'
          ? 'markdown'
          : this.language(kernelLanguage, request.mimeType, 'python');
      const notebook =
        (widget.model?.getMetadata('codestral') as INotebookSettings | undefined) ?? null;
      const body = notebookRequestBody(cells, id, request, {
        ...options,
        language,
        path: widget.context.path,
        kernelId: widget.sessionContext.session?.kernel?.id ?? null,
        notebook
      });
      if (!body) {
        return null;
      }
      // What else the model sees: the other cells (and the notebook's switch).
      const others = cells.filter(c => c.id !== id);
      const context = hashText(
        JSON.stringify(notebook),
        ...others.map(
          c => `${c.cell_type}\u0000${c.source}\u0000${c.metadata?.tags.join(',') ?? ''}`
        )
      );
      const document = widget.context.path;
      return { body, document, place: { key: `${document}#${id}`, before, after, context } };
    }
    const doc = widget as IDocumentWidget<FileEditor> | undefined;
    if (doc?.content instanceof FileEditor) {
      const body = fileBody(request.text, request.offset, {
        ...options,
        language: this.language(undefined, request.mimeType, 'text'),
        path: doc.context.path
      });
      const document = doc.context.path;
      return { body, document, place: { key: document, before, after, context: '' } };
    }
    return null;
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
    const target = this.documentBody(context.widget, request, this.options());
    if (!target || this.settings.skipLanguages.includes(target.body.language ?? '')) {
      return nothing;
    }
    // Typing along a suggestion, or back at a place answered before: answer
    // from it, without asking the server (a streaming one goes on streaming).
    const followed = this._store.follow(target.document, target.place);
    if (followed) {
      this.followed++;
      return { items: [this._item(followed.suggestion, target.place)] };
    }
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
        ? adaptiveDelay(this.rhythm.gapMs, this._expectedLatency(), this._coreDelay)
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
    return { insertText, isIncomplete: !suggestion.done, token };
  }

  /** Read a request's events into its suggestion, whoever shows it (the stream is not the core's to stop). */
  private async _pump(
    events: AsyncGenerator<IStreamEvent>,
    suggestion: Suggestion,
    document: string
  ): Promise<void> {
    let text = '';
    this._activity.emit({ state: 'working' });
    try {
      for await (const event of events) {
        if (event.error) {
          const { kind, message, retry_after } = event.error;
          throw new CompletionFailure(kind, message, retry_after);
        }
        if (event.done && event.off) {
          this._store.remove(document, suggestion);
          suggestion.update('', true);
          this._activity.emit({ state: 'off', message: event.off });
          return;
        }
        if (event.delta) {
          text += event.delta;
          suggestion.update(text);
        }
        if (event.done) {
          this._errors.reset();
          const firstTokenMs = event.timings?.first_token_ms;
          if (typeof firstTokenMs === 'number') {
            this._latencies.push(firstTokenMs);
            this._latencies.splice(0, this._latencies.length - 20);
          }
          this._activity.emit({ state: 'idle', firstTokenMs, backend: event.backend });
          suggestion.update(event.completion ?? text, true);
          return;
        }
      }
      // Aborted by a newer request: it will never be complete, so it answers nothing later.
      this._store.remove(document, suggestion);
      suggestion.update(text, true);
      this._activity.emit({ state: 'idle' });
    } catch (error) {
      this._store.remove(document, suggestion);
      const failure =
        error instanceof CompletionFailure ? error : new CompletionFailure('error', String(error));
      if (failure.kind === 'cancelled') {
        this._activity.emit({ state: 'idle' });
      } else if (failure.kind === 'policy') {
        // The course policy: not an error to show in the editor, a state for the bar.
        this._activity.emit({ state: 'off', message: failure.message });
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
        yield { response: { insertText: rest, isIncomplete: !suggestion.done } };
      }
      if (suggestion.done) {
        return;
      }
      await suggestion.changed();
    }
  }

  /** The median first-token time of the recent completions, or null before any. */
  private _expectedLatency(): number | null {
    if (!this._latencies.length) {
      return null;
    }
    const sorted = [...this._latencies].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)];
  }

  /** What is left of our suggestion on screen at the cursor of `editor`'s document, if any. */
  visibleRest(widget: unknown, text: string, offset: number): string | null {
    const request = { text, offset, mimeType: undefined } as CompletionHandler.IRequest;
    const target = this.documentBody(widget, request, this.options());
    if (!target) {
      return null;
    }
    return this._store.follow(target.document, target.place)?.rest ?? null;
  }

  /** Let the model read the prompt of the active cell of `panel` ahead of the first keystroke. */
  prefetch(panel: NotebookPanel): void {
    if (!this.enabled || !this.settings.prefetch) {
      return;
    }
    const cell = panel.content.activeCell;
    if (!cell || cell.model.type !== 'code') {
      return;
    }
    const source = cell.model.sharedModel.getSource();
    const request = {
      text: source,
      offset: source.length,
      mimeType: undefined
    } as CompletionHandler.IRequest;
    const body = this.documentBody(
      panel,
      request,
      { ...this.options(), prefetch: true },
      cell.model.id
    )?.body;
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return;
    }
    this._prefetching?.abort();
    this._prefetching = new AbortController();
    void this._client.prefetch(body, this._prefetching.signal);
  }
}
