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
import { ISignal, Signal } from '@lumino/signaling';

import { CodestralClient } from './client';
import {
  CompletionFailure,
  ErrorGate,
  ICellSource,
  ICompletionBody,
  IRequestOptions,
  IStreamEvent,
  LatestRequest,
  fileBody,
  languageOf,
  notebookBody
} from './protocol';

export interface ICodestralSettings {
  enabled: boolean;
  trigger: 'automatic' | 'manual';
  debounceMs: number;
  maxTokens: number;
  lineMode: 'multi' | 'single';
  skipLanguages: string[];
  prefetch: boolean;
}

export const DEFAULT_SETTINGS: ICodestralSettings = {
  enabled: true,
  trigger: 'automatic',
  debounceMs: 200,
  maxTokens: 128,
  lineMode: 'multi',
  skipLanguages: ['markdown'],
  prefetch: true
};

export interface IActivity {
  state: 'idle' | 'working' | 'error';
  message?: string;
  firstTokenMs?: number;
}

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms));

/** What the server needs to know about the document the editor belongs to. */
export function documentBody(
  widget: unknown,
  request: CompletionHandler.IRequest,
  options: IRequestOptions
): ICompletionBody | null {
  if (widget instanceof NotebookPanel) {
    const notebook = widget.content;
    const cells: ICellSource[] = notebook.widgets.map(cell => ({
      cell_type: cell.model.type as ICellSource['cell_type'],
      source: cell.model.sharedModel.getSource()
    }));
    // The request comes from the active cell's editor; check, in case focus moved.
    let index = notebook.activeCellIndex;
    if (cells[index]?.source !== request.text) {
      index = cells.findIndex(cell => cell.source === request.text);
    }
    if (index < 0) {
      return null;
    }
    const language =
      cells[index].cell_type === 'markdown'
        ? 'markdown'
        : ((widget.model?.metadata?.language_info as { name?: string } | undefined)?.name ??
          languageOf(request.mimeType));
    return notebookBody(cells, index, request.offset, {
      ...options,
      language,
      path: widget.context.path,
      kernelId: widget.sessionContext.session?.kernel?.id ?? null
    });
  }
  const doc = widget as IDocumentWidget<FileEditor> | undefined;
  if (doc?.content instanceof FileEditor) {
    return fileBody(request.text, request.offset, {
      ...options,
      language: languageOf(request.mimeType, 'text'),
      path: doc.context.path
    });
  }
  return null;
}

/**
 * The inline completion provider: asks `codestral/complete` and streams the
 * text into JupyterLab's ghost text as it arrives.
 */
export class CodestralProvider implements IInlineCompletionProvider {
  readonly identifier = 'jupyter-codestral';
  readonly name = 'Codestral';
  // Defaults for the core's per-provider settings: we debounce ourselves
  // (so our own setting applies), and we offer completions mid-line.
  readonly schema = {
    default: {
      enabled: true,
      debouncerDelay: 0,
      timeout: 20000,
      autoFillInMiddle: true
    }
  };
  settings: ICodestralSettings = { ...DEFAULT_SETTINGS };

  private _client: CodestralClient;
  private _streams = new Map<string, AsyncGenerator<IStreamEvent>>();
  private _latest = new LatestRequest();
  private _errors = new ErrorGate();
  private _blockedUntil = 0;
  private _prefetching: AbortController | null = null;
  private _activity = new Signal<this, IActivity>(this);

  constructor(client: CodestralClient) {
    this._client = client;
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
    if (!this.settings.enabled) {
      return nothing;
    }
    const automatic = context.triggerKind === InlineCompletionTriggerKind.Automatic;
    if (automatic && this.settings.trigger === 'manual') {
      return nothing;
    }
    // A newer keystroke makes the request in flight useless: abort it, so the
    // server stops the backend too.
    const { ticket, signal } = this._latest.begin();
    if (automatic && this.settings.debounceMs > 0) {
      await sleep(this.settings.debounceMs);
      if (!this._latest.isLatest(ticket)) {
        return nothing;
      }
    }
    const body = documentBody(context.widget, request, this.options());
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return nothing;
    }
    if (automatic && Date.now() < this._blockedUntil) {
      return nothing; // rate limited: the status bar says until when
    }
    const token = `codestral-${ticket}`;
    this._streams.set(token, this._client.complete(body, signal));
    return { items: [{ insertText: '', isIncomplete: true, token }] };
  }

  async *stream(
    token: string
  ): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const events = this._streams.get(token);
    this._streams.delete(token);
    if (!events) {
      return;
    }
    let text = '';
    this._activity.emit({ state: 'working' });
    try {
      for await (const event of events) {
        if (event.error) {
          const { kind, message, retry_after } = event.error;
          throw new CompletionFailure(kind, message, retry_after);
        }
        if (event.delta) {
          text += event.delta;
          yield { response: { insertText: text, isIncomplete: true } };
        }
        if (event.done) {
          this._errors.reset();
          this._activity.emit({
            state: 'idle',
            firstTokenMs: event.timings?.first_token_ms
          });
          yield {
            response: { insertText: event.completion ?? text, isIncomplete: false }
          };
          return;
        }
      }
      this._activity.emit({ state: 'idle' }); // aborted by a newer request
    } catch (error) {
      const failure =
        error instanceof CompletionFailure
          ? error
          : new CompletionFailure('error', String(error));
      if (failure.kind === 'cancelled') {
        this._activity.emit({ state: 'idle' });
        return;
      }
      if (failure.retryAfter) {
        this._blockedUntil = Date.now() + failure.retryAfter * 1000;
      }
      this._activity.emit({ state: 'error', message: failure.message });
      if (this._errors.shouldShow({ kind: failure.kind, message: failure.message })) {
        yield {
          response: {
            insertText: text,
            isIncomplete: false,
            error: { message: failure.message }
          }
        };
      }
    }
  }

  /** Warm the model's cache for the cell the cursor just entered. */
  prefetch(widget: NotebookPanel): void {
    if (!this.settings.enabled || !this.settings.prefetch) {
      return;
    }
    const cell = widget.content.activeCell;
    if (!cell || cell.model.type !== 'code') {
      return;
    }
    const source = cell.model.sharedModel.getSource();
    const request = { text: source, offset: source.length, mimeType: undefined } as CompletionHandler.IRequest;
    const body = documentBody(widget, request, { ...this.options(), prefetch: true });
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return;
    }
    this._prefetching?.abort();
    this._prefetching = new AbortController();
    void this._client.prefetch(body, this._prefetching.signal);
  }
}
