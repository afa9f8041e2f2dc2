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

/** Our part of the inline completer's settings (besides the core's own: enabled, debounce, timeout). */
export interface ICodestralSettings {
  trigger: 'automatic' | 'manual';
  maxTokens: number;
  lineMode: 'multi' | 'single';
  skipLanguages: string[];
  prefetch: boolean;
}

export const DEFAULT_SETTINGS: ICodestralSettings = {
  trigger: 'automatic',
  maxTokens: 128,
  lineMode: 'multi',
  skipLanguages: ['markdown'],
  prefetch: true
};

export interface IActivity {
  /** 'off': no completion here, by the notebook's settings or the course policy (`message` says which). */
  state: 'idle' | 'working' | 'error' | 'off';
  message?: string;
  firstTokenMs?: number;
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
  private _streams = new Map<string, AsyncGenerator<IStreamEvent>>();
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

  configure(settings: Partial<ICodestralSettings> & { enabled?: boolean }): void {
    const { enabled, ...ours } = settings;
    this.enabled = enabled ?? true;
    this.settings = { ...DEFAULT_SETTINGS, ...ours };
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

  /** The request body for the document the completer is in, or null when there is nothing to ask. */
  documentBody(
    widget: unknown,
    request: CompletionHandler.IRequest,
    options: IRequestOptions,
    cellId?: string
  ): ICompletionBody | null {
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
      return notebookRequestBody(cells, id, request, {
        ...options,
        language,
        path: widget.context.path,
        kernelId: widget.sessionContext.session?.kernel?.id ?? null,
        notebook: (widget.model?.getMetadata('codestral') as INotebookSettings | undefined) ?? null
      });
    }
    const doc = widget as IDocumentWidget<FileEditor> | undefined;
    if (doc?.content instanceof FileEditor) {
      return fileBody(request.text, request.offset, {
        ...options,
        language: this.language(undefined, request.mimeType, 'text'),
        path: doc.context.path
      });
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
    const automatic = context.triggerKind === InlineCompletionTriggerKind.Automatic;
    if (automatic && this.settings.trigger === 'manual') {
      return nothing;
    }
    if (automatic && Date.now() < this._blockedUntil) {
      return nothing; // rate limited: the status bar says until when
    }
    // The request comes from the active cell's editor, now: its model id
    // says which cell it is, whatever text the others hold.
    const body = this.documentBody(context.widget, request, this.options());
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return nothing;
    }
    // A newer request makes the one in flight useless: abort it, so the
    // server stops the backend too.
    const { ticket, signal } = this._latest.begin();
    const token = `codestral-${ticket}`;
    this._streams.set(token, this._client.complete(body, signal));
    return { items: [{ insertText: '', isIncomplete: true, token }] };
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }> {
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
        if (event.done && event.off) {
          this._activity.emit({ state: 'off', message: event.off });
          return;
        }
        if (event.done) {
          this._errors.reset();
          this._activity.emit({ state: 'idle', firstTokenMs: event.timings?.first_token_ms });
          yield { response: { insertText: event.completion ?? text, isIncomplete: false } };
          return;
        }
      }
      this._activity.emit({ state: 'idle' }); // aborted by a newer request
    } catch (error) {
      const failure =
        error instanceof CompletionFailure ? error : new CompletionFailure('error', String(error));
      if (failure.kind === 'cancelled') {
        this._activity.emit({ state: 'idle' });
        return;
      }
      if (failure.kind === 'policy') {
        // The course policy: not an error to show in the editor, a state for the bar.
        this._activity.emit({ state: 'off', message: failure.message });
        return;
      }
      if (failure.retryAfter) {
        this._blockedUntil = Date.now() + failure.retryAfter * 1000;
      }
      this._activity.emit({
        state: 'error',
        message: failure.message,
        retryAfter: failure.retryAfter
      });
      if (this._errors.shouldShow({ kind: failure.kind, message: failure.message })) {
        yield {
          response: { insertText: text, isIncomplete: false, error: { message: failure.message } }
        };
      }
    }
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
    );
    if (!body || this.settings.skipLanguages.includes(body.language ?? '')) {
      return;
    }
    this._prefetching?.abort();
    this._prefetching = new AbortController();
    void this._client.prefetch(body, this._prefetching.signal);
  }
}
