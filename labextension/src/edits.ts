/**
 * Rewrite, Fix and Document a code cell (or the selection in it): the commands, in the cell's context
 * menu, the command palette and as shortcuts; the edit streamed from `POST codestral/edit` into the
 * cell as an inline diff; Tab or Enter accepts, Escape rejects, each chunk's buttons decide one
 * chunk; a status bar item says what runs and stops it. One edit at a time: a new one rejects the
 * change still shown.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { ICommandPalette, InputDialog, Notification } from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { CodeMirrorEditor } from '@jupyterlab/codemirror';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

import { ICounted } from './acceptance';
import { CodestralClient } from './client';
import { EditKind, EditRequest, Status } from './contract';
import { IUndoHistory, InlineDiff } from './inlinediff';
import { commonEnds } from './streamedrange';
import { CompletionFailure, isEditDone, isError } from './protocol';
import { CodestralProvider } from './provider';

export const EDIT_COMMANDS: Record<EditKind, string> = {
  rewrite: 'codestral:rewrite',
  fix: 'codestral:fix',
  document: 'codestral:document'
};
export const ACCEPT_EDIT = 'codestral:accept-edit';
export const REJECT_EDIT = 'codestral:reject-edit';
export const STOP_EDIT = 'codestral:stop-edit';

const LABELS: Record<EditKind, string> = {
  rewrite: 'Rewrite with Codestral…',
  fix: 'Fix with Codestral',
  document: 'Document with Codestral'
};
const DOING: Record<EditKind, string> = {
  rewrite: 'rewriting',
  fix: 'fixing',
  document: 'documenting'
};

type Phase = 'writing' | 'review';

/** One edit: its request's stream written into the cell's diff, then the user's decision. */
export class EditSession {
  readonly counted: ICounted = {};
  private readonly _abort = new AbortController();
  private _phase: Phase = 'writing';
  private _ended = false;
  private readonly _changed = new Signal<EditSession, void>(this);

  constructor(
    readonly kind: EditKind,
    private readonly _diff: InlineDiff,
    private readonly _provider: CodestralProvider,
    private readonly _onEnd: (session: EditSession) => void
  ) {}

  /** The phase changed, or the count of chunks left. */
  get changed(): ISignal<EditSession, void> {
    return this._changed;
  }

  get phase(): Phase {
    return this._phase;
  }

  get chunks(): number {
    return this._diff.chunks;
  }

  get ended(): boolean {
    return this._ended;
  }

  /** Stream the edit into the diff; errors end it with the cell as it was and a notification. */
  async run(client: CodestralClient, body: EditRequest): Promise<void> {
    try {
      for await (const event of client.edit(body, this._abort.signal)) {
        if (this._ended) {
          return;
        }
        if (isError(event)) {
          throw new CompletionFailure(event.error.kind, event.error.message);
        }
        if (isEditDone(event)) {
          this.counted.route = event.route;
          this.counted.backend = event.backend;
          this._provider.acceptance.shown(this.counted);
          this._diff.finish(event.replacement);
          this._phase = 'review';
          if (this._diff.text === this._diff.original) {
            Notification.info(`Codestral proposes no change to this cell (${this.kind}).`, {
              autoClose: 4000
            });
            this.end('dismissed');
            return;
          }
          this._changed.emit();
          return;
        }
        this._diff.write(event.delta);
        this._changed.emit();
      }
      if (!this._ended) {
        throw new CompletionFailure(
          'bad_reply',
          'The server ended the edit without its done line.'
        );
      }
    } catch (error) {
      if (this._ended) {
        return;
      }
      this.end(null);
      const message = error instanceof Error ? error.message : String(error);
      Notification.error(`Codestral could not ${this.kind} the cell: ${message}`, {
        autoClose: 8000
      });
    }
  }

  /** Tab or Enter: the change stays (while it is still written, the keys do nothing). */
  accept(): void {
    if (this._phase === 'review') {
      this.end('accepted');
    }
  }

  /** Escape, or the status item's stop: the cell as it was, the request stopped. */
  reject(): void {
    this.end(this._phase === 'review' ? 'dismissed' : null);
  }

  /** The diff changed: once every chunk was decided by its buttons, the edit is over. */
  diffChanged(): void {
    if (this._ended || this._phase !== 'review') {
      return;
    }
    if (this._diff.chunks === 0) {
      this.end(this._diff.text === this._diff.original ? 'dismissed' : 'accepted');
    } else {
      this._changed.emit();
    }
  }

  /** The cell went away (deleted, its notebook closed): the request stops, there is nothing to restore. */
  abandon(): void {
    if (!this._ended) {
      this._ended = true;
      this._abort.abort();
      this._changed.emit();
      this._onEnd(this);
    }
  }

  private end(outcome: 'accepted' | 'dismissed' | null): void {
    if (this._ended) {
      return;
    }
    this._ended = true;
    this._abort.abort();
    if (outcome === 'accepted') {
      this._provider.acceptance.accepted(this.counted, changedChars(this._diff), 'whole');
      this._diff.accept();
    } else {
      if (outcome === 'dismissed') {
        this._provider.acceptance.dismissed(this.counted);
      }
      this._diff.reject();
    }
    this._changed.emit();
    this._onEnd(this);
  }
}

/** How many characters of the cell the accepted change wrote (its text between the common ends). */
function changedChars(diff: InlineDiff): number {
  const { head, tail } = commonEnds(diff.original, diff.text);
  return diff.text.length - head - tail;
}

/** The status bar item while an edit runs: what it does, and a click to stop it. */
class EditStatus extends Widget {
  private _session: EditSession | null = null;

  constructor(private readonly _stop: () => void) {
    super({ node: document.createElement('div') });
    this.addClass('jp-CodestralEditStatus');
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', () => this._stop());
  }

  set session(session: EditSession | null) {
    this._session = session;
    this.render();
  }

  render(): void {
    const session = this._session;
    if (!session || session.ended) {
      this.node.textContent = '';
      this.node.dataset.phase = 'none';
      return;
    }
    this.node.dataset.phase = session.phase;
    if (session.phase === 'writing') {
      this.node.textContent = `Codestral: ${DOING[session.kind]}… ■ Stop`;
      this.node.title = 'Click (or Escape in the cell) to stop and keep the cell as it was.';
    } else {
      const n = session.chunks;
      this.node.textContent = `Codestral: ${n} change${n === 1 ? '' : 's'} · Tab accept · Esc reject`;
      this.node.title =
        'Tab or Enter keeps the change, Escape brings the cell back; each change has its own buttons. Click to reject.';
    }
  }
}

/** The cell's undo history: its shared model's (a Yjs UndoManager), which the cell's undo keys use. */
function undoHistory(cell: CodeCell): IUndoHistory | null {
  const shared = cell.model.sharedModel as unknown as { undoManager?: IUndoHistory | null };
  return shared.undoManager ?? null;
}

/**
 * The code cell an edit command acts on: the one the context menu was opened on, else the active
 * one; with its editor, or null.
 */
function targetCodeCell(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker
): { panel: NotebookPanel; cell: CodeCell; editor: CodeMirrorEditor } | null {
  const panel = notebooks.currentWidget;
  if (!panel) {
    return null;
  }
  const clicked = app.contextMenuHitTest(node => node.classList.contains('jp-Cell'));
  const cell = clicked
    ? panel.content.widgets.find(widget => widget.node === clicked)
    : panel.content.activeCell;
  if (!(cell instanceof CodeCell) || !(cell.editor instanceof CodeMirrorEditor)) {
    return null;
  }
  return { panel, cell, editor: cell.editor };
}

function lastRunRaised(cell: CodeCell): boolean {
  const outputs = cell.model.outputs;
  for (let i = 0; i < outputs.length; i++) {
    if (outputs.get(i).type === 'error') {
      return true;
    }
  }
  return false;
}

export interface IEditOptions {
  app: JupyterFrontEnd;
  client: CodestralClient;
  provider: CodestralProvider;
  notebooks: INotebookTracker;
  palette: ICommandPalette | null;
  statusBar: IStatusBar | null;
  /** The server's last status for the current notebook (its course policy's kinds off). */
  status: () => Status | null;
}

/** Add the edit commands, their palette entries and their status bar item. */
export function addEditCommands(options: IEditOptions): void {
  const { app, client, provider, notebooks, palette, statusBar } = options;
  let current: EditSession | null = null;
  const sessionChanged = new Signal<object, void>({});
  const status = new EditStatus(() => current?.reject());
  // Without a status bar (Notebook 7), the item shows in the edited cell itself, at its top right.
  if (!statusBar) {
    status.addClass('jp-mod-inCell');
  }
  const showStatusIn = (cell: CodeCell | null): void => {
    if (statusBar) {
      return;
    }
    if (status.isAttached) {
      Widget.detach(status);
    }
    if (cell?.isAttached) {
      Widget.attach(status, cell.node);
    }
  };

  const offByPolicy = (kind: EditKind): string | null => {
    const policy = options.status()?.policy;
    return policy?.off_kinds?.includes(kind) ? (policy.reason ?? 'off here (course policy)') : null;
  };

  const start = async (kind: EditKind): Promise<void> => {
    const target = targetCodeCell(app, notebooks);
    if (!target) {
      return;
    }
    const { panel, cell, editor } = target;
    panel.content.activeCellIndex = panel.content.widgets.indexOf(cell);
    let instruction: string | undefined;
    if (kind === 'rewrite') {
      const asked = await InputDialog.getText({
        title: 'Rewrite with Codestral',
        label: 'How should the code change?',
        placeholder: 'e.g. use a list comprehension',
        okLabel: 'Rewrite'
      });
      instruction = asked.button.accept ? (asked.value ?? '').trim() : '';
      if (!instruction) {
        return;
      }
    }
    current?.reject();
    const view = editor.editor;
    const selection = view.state.selection.main;
    const range = selection.empty
      ? { start: 0, end: view.state.doc.length }
      : { start: selection.from, end: selection.to };
    const body = provider.targets.edit(
      panel,
      cell.model.id,
      kind,
      selection.empty ? null : range,
      instruction
    );
    if (!body) {
      return;
    }
    let session: EditSession | null = null;
    const diff = new InlineDiff(
      view,
      range.start,
      range.end,
      {
        accept: () => session?.accept(),
        reject: () => session?.reject(),
        changed: () => session?.diffChanged()
      },
      undoHistory(cell)
    );
    session = new EditSession(kind, diff, provider, ended => {
      if (current === ended) {
        current = null;
        status.session = null;
        showStatusIn(null);
        sessionChanged.emit();
      }
      app.commands.notifyCommandChanged();
    });
    session.changed.connect(() => status.render());
    const running = session;
    cell.disposed.connect(() => running.abandon());
    current = session;
    status.session = session;
    showStatusIn(cell);
    sessionChanged.emit();
    app.commands.notifyCommandChanged();
    editor.focus();
    await session.run(client, body);
  };

  for (const kind of Object.keys(EDIT_COMMANDS) as EditKind[]) {
    app.commands.addCommand(EDIT_COMMANDS[kind], {
      label: () => {
        const off = offByPolicy(kind);
        return off ? `${LABELS[kind]} (off: course policy)` : LABELS[kind];
      },
      caption: () =>
        offByPolicy(kind) ??
        (kind === 'fix'
          ? 'Ask Codestral to fix the error this cell raised; the change is shown as a diff to accept or reject.'
          : kind === 'rewrite'
            ? 'Rewrite the cell (or its selection) as you describe; the change is shown as a diff.'
            : 'Write the docstring of the cell’s function or class (a comment above plain code); the code stays as it is.'),
      isEnabled: () => targetCodeCell(app, notebooks) !== null && offByPolicy(kind) === null,
      // Fix is offered on a cell whose last run raised; from the palette, on any code cell.
      isVisible: args =>
        kind !== 'fix' ||
        args['palette'] === true ||
        (() => {
          const target = targetCodeCell(app, notebooks);
          return target !== null && lastRunRaised(target.cell);
        })(),
      execute: () => start(kind)
    });
    palette?.addItem({
      command: EDIT_COMMANDS[kind],
      category: 'Codestral',
      args: { palette: true }
    });
  }
  app.commands.addCommand(ACCEPT_EDIT, {
    label: 'Accept the Codestral Edit',
    isEnabled: () => current?.phase === 'review',
    execute: () => current?.accept()
  });
  app.commands.addCommand(REJECT_EDIT, {
    label: 'Reject the Codestral Edit',
    isEnabled: () => current !== null,
    execute: () => current?.reject()
  });
  app.commands.addCommand(STOP_EDIT, {
    label: 'Stop the Codestral Edit',
    isEnabled: () => current?.phase === 'writing',
    execute: () => current?.reject()
  });
  for (const command of [ACCEPT_EDIT, REJECT_EDIT, STOP_EDIT]) {
    palette?.addItem({ command, category: 'Codestral' });
  }
  // A cell's run changes whether Fix is offered; when it raised, the model reads its Fix ahead (a
  // local model then answers Fix from its cache instead of reading the cell and its error first).
  notebooks.activeCellChanged.connect(() => app.commands.notifyCommandChanged());
  let readingAhead = new AbortController();
  NotebookActions.executed.connect((_, { notebook, cell }) => {
    app.commands.notifyCommandChanged();
    const panel = notebooks.find(widget => widget.content === notebook);
    if (!panel || !(cell instanceof CodeCell) || !lastRunRaised(cell)) {
      return;
    }
    if (!provider.settings.prefetch || offByPolicy('fix') !== null || current !== null) {
      return;
    }
    const body = provider.targets.edit(panel, cell.model.id, 'fix', null);
    if (body) {
      readingAhead.abort();
      readingAhead = new AbortController();
      void client.prefetch({ ...body, prefetch: true, stream: false }, readingAhead.signal, 'edit');
    }
  });
  if (statusBar) {
    statusBar.registerStatusItem('jupyter-codestral:edit', {
      item: status,
      align: 'left',
      rank: 101,
      isActive: () => current !== null,
      activeStateChanged: sessionChanged
    });
  }
}
