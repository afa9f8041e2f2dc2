/**
 * What to ask the server for the document the completer is in: the request's body, the
 * document, and the cursor's place (for the suggestion store). Built from the widget: every
 * cell's text, tags and last run, the notebook's switch, its kernel and language.
 */
import { CodeCell } from '@jupyterlab/cells';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { IDocumentWidget } from '@jupyterlab/docregistry';
import { FileEditor } from '@jupyterlab/fileeditor';
import { NotebookPanel } from '@jupyterlab/notebook';

import { CompleteRequest, EditKind, EditRequest } from './contract';
import {
  ICellSource,
  INotebookCell,
  INotebookSettings,
  IRequestOptions,
  editBody,
  fileBody,
  notebookBody,
  notebookRequestBody,
  serverLanguage
} from './protocol';
import { IPlace, hashText } from './suggestions';

/** A request to make, or to answer from a suggestion: its body, its document and the cursor's place. */
export interface ITarget {
  body: CompleteRequest;
  document: string;
  place: IPlace;
}

/** The text of the editor that asks, and the cursor in it (the core's request). */
export interface IEditorText {
  text: string;
  offset: number;
  mimeType?: string;
}

/** The cells of a notebook as the server wants them, each with its model's id. */
export function notebookCells(panel: NotebookPanel): INotebookCell[] {
  return panel.content.widgets.map(cell => {
    const entry: INotebookCell = {
      id: cell.model.id,
      cell_type: cell.model.type as INotebookCell['cell_type'],
      source: cell.model.sharedModel.getSource()
    };
    // Which kernel snapshot shows what the cell produced (the server's kernel_variables.py).
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

export class Targets {
  constructor(private readonly _languages: IEditorLanguageRegistry | null = null) {}

  private language(
    name: string | undefined,
    mimeType: string | undefined,
    fallback: string
  ): string {
    const found = mimeType ? this._languages?.findByMIME(mimeType)?.name : undefined;
    return serverLanguage(name ?? found, fallback);
  }

  /** The options every request about `panel` carries: its path, kernel, language and switch. */
  private notebookOptions(
    panel: NotebookPanel,
    options: IRequestOptions,
    cellType: string | undefined,
    mimeType?: string
  ): IRequestOptions {
    const kernelLanguage = (panel.model?.metadata?.language_info as { name?: string } | undefined)
      ?.name;
    return {
      ...options,
      language:
        cellType === 'markdown' ? 'markdown' : this.language(kernelLanguage, mimeType, 'python'),
      path: panel.context.path,
      kernelId: panel.sessionContext.session?.kernel?.id ?? null,
      notebook: this.switchOf(panel)
    };
  }

  private switchOf(panel: NotebookPanel): INotebookSettings | null {
    return (panel.model?.getMetadata('codestral') as INotebookSettings | undefined) ?? null;
  }

  /**
   * The request for the document the completer is in (a notebook's cell `cellId`, its active
   * cell by default, or a file), or null when there is nothing to ask.
   */
  of(
    widget: unknown,
    request: IEditorText,
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
      const body = notebookRequestBody(
        cells,
        id,
        request,
        this.notebookOptions(widget, options, cell?.cell_type, request.mimeType)
      );
      if (!body) {
        return null;
      }
      // What else the model sees: the other cells (and the notebook's switch).
      const others = cells.filter(c => c.id !== id);
      const context = hashText(
        JSON.stringify(this.switchOf(widget)),
        ...others.map(
          c => `${c.cell_type}\u0000${c.source}\u0000${c.metadata?.tags?.join(',') ?? ''}`
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

  /**
   * The edit of code cell `cellId` of `panel`: its `selection` (editor offsets; none, the whole cell),
   * with the cell's errors for a fix and the notebook around it; null when the cell is gone.
   */
  edit(
    panel: NotebookPanel,
    cellId: string,
    kind: EditKind,
    selection: { start: number; end: number } | null,
    instruction?: string
  ): EditRequest | null {
    const cells = notebookCells(panel);
    const cellIndex = cells.findIndex(cell => cell.id === cellId);
    const widget = panel.content.widgets[cellIndex];
    if (cellIndex < 0 || !widget) {
      return null;
    }
    const outputs = widget instanceof CodeCell ? widget.model.outputs.toJSON() : [];
    const sources = cells.map(({ id: _id, ...cell }): ICellSource => cell);
    return editBody(
      { cells: sources, cellIndex, kind, outputs, selection, instruction },
      this.notebookOptions(panel, {}, 'code', widget.model.mimeType)
    );
  }

  /**
   * The request for the code cell after cell `cellId` of `panel` (a new one when the next cell is not
   * code), the cursor at its start: what the model reads while a markdown cell is written, so that the
   * code cell after it answers at once.
   */
  after(panel: NotebookPanel, cellId: string, options: IRequestOptions): CompleteRequest | null {
    const cells = notebookCells(panel);
    const index = cells.findIndex(cell => cell.id === cellId);
    if (index < 0) {
      return null;
    }
    const sources = cells.map(({ id: _id, ...cell }): ICellSource => cell);
    if (sources[index + 1]?.cell_type !== 'code') {
      sources.splice(index + 1, 0, { cell_type: 'code', source: '' });
    }
    return notebookBody(sources, index + 1, 0, this.notebookOptions(panel, options, 'code'));
  }
}
