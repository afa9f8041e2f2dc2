/**
 * What the plugin adds to the editor around JupyterLab's inline completer:
 * accepting the next word or line of a suggestion, a request on a new empty
 * line (the core asks only at the end of a non-blank line), and the typing
 * rhythm the adaptive delay uses.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { IDocumentWidget } from '@jupyterlab/docregistry';
import { FileEditor } from '@jupyterlab/fileeditor';
import { NotebookPanel } from '@jupyterlab/notebook';
import { CommandRegistry } from '@lumino/commands';

import { CodestralProvider } from './provider';
import { nextLine, nextWord } from './accept';

export const ACCEPT_WORD = 'codestral:accept-word';
export const ACCEPT_LINE = 'codestral:accept-line';
const INVOKE = 'inline-completer:invoke';

/** The editor with the focus and the widget that holds it (a notebook or a file editor). */
type Editor = FileEditor['editor'];

function activeEditor(app: JupyterFrontEnd): { widget: unknown; editor: Editor } | null {
  const widget = app.shell.currentWidget;
  if (widget instanceof NotebookPanel) {
    const editor = widget.content.activeCell?.editor;
    return editor ? { widget, editor } : null;
  }
  const doc = widget as IDocumentWidget<FileEditor> | null;
  if (doc?.content instanceof FileEditor) {
    return { widget: doc, editor: doc.content.editor };
  }
  return null;
}

/** The ghost text on screen, as the DOM shows it (when the suggestion is not ours). */
function ghostText(): string | null {
  const ghost = document.querySelector('.jp-GhostText');
  return ghost?.textContent ?? null;
}

/**
 * Insert the part `cut` takes of the suggestion on screen at the cursor. The
 * core keeps the rest on screen (the typed text matches it), and our
 * provider answers its next request from the same suggestion.
 */
function acceptPart(
  app: JupyterFrontEnd,
  provider: CodestralProvider,
  cut: (text: string) => string,
  how: 'word' | 'line'
): void {
  const active = activeEditor(app);
  if (!active) {
    return;
  }
  const { widget, editor } = active;
  const text = editor.model.sharedModel.getSource();
  const offset = editor.getOffsetAt(editor.getCursorPosition());
  const rest = provider.visibleRest(widget, text, offset) ?? ghostText();
  const part = rest ? cut(rest) : '';
  if (!part) {
    return;
  }
  editor.model.sharedModel.updateSource(offset, offset, part);
  provider.accepted(how, part.length);
  editor.setCursorPosition(editor.getPositionAt(offset + part.length)!);
  // Show the rest at once (answered from the suggestion, no request).
  void app.commands.execute(INVOKE);
}

export function addEditingCommands(app: JupyterFrontEnd, provider: CodestralProvider): void {
  app.commands.addCommand(ACCEPT_WORD, {
    label: 'Accept the Next Word of the Suggestion',
    caption: 'Insert the next word of the inline suggestion; the rest stays shown.',
    execute: () => acceptPart(app, provider, nextWord, 'word')
  });
  app.commands.addCommand(ACCEPT_LINE, {
    label: 'Accept the Next Line of the Suggestion',
    caption: 'Insert the next line of the inline suggestion; the rest stays shown.',
    execute: () => acceptPart(app, provider, nextLine, 'line')
  });
}

/**
 * Our accept shortcuts, before the editor sees them: CodeMirror binds
 * Ctrl+Arrow to its own word moves and would handle them first. The keys
 * are read from the command registry, so a change in the Settings Editor
 * applies; they act only while ghost text is shown.
 */
function acceptShortcut(app: JupyterFrontEnd, event: KeyboardEvent): boolean {
  const target = event.target as HTMLElement;
  if (event.defaultPrevented || !target.closest('.jp-mod-inline-completer-active')) {
    return false;
  }
  const pressed = CommandRegistry.keystrokeForKeydownEvent(event);
  const binding = app.commands.keyBindings.find(
    b =>
      (b.command === ACCEPT_WORD || b.command === ACCEPT_LINE) &&
      b.keys.length === 1 &&
      b.keys[0] === pressed
  );
  if (!binding) {
    return false;
  }
  event.preventDefault();
  event.stopPropagation();
  void app.commands.execute(binding.command);
  return true;
}

/**
 * Watch the keys typed in editors: every key feeds the typing rhythm; Enter
 * on a line that leaves the cursor on an empty (or indentation-only) line
 * asks for a suggestion there once the debounce has passed, as the core does
 * not (JupyterLab issue 16847).
 */
export function watchTyping(app: JupyterFrontEnd, provider: CodestralProvider): void {
  let timer = 0;
  document.addEventListener(
    'keydown',
    event => {
      const target = event.target as HTMLElement | null;
      if (!target?.closest('.cm-content')) {
        return;
      }
      provider.rhythm.note(Date.now());
      if (acceptShortcut(app, event)) {
        return;
      }
      if (event.key === 'Escape' && target.closest('.jp-mod-inline-completer-active')) {
        provider.dismissed();
        return;
      }
      if (
        event.key !== 'Enter' ||
        event.shiftKey ||
        event.ctrlKey ||
        event.altKey ||
        event.metaKey
      ) {
        return;
      }
      window.clearTimeout(timer);
      timer = window.setTimeout(() => {
        const active = activeEditor(app);
        if (!active || !provider.enabled || provider.settings.trigger !== 'automatic') {
          return;
        }
        const { editor } = active;
        const position = editor.getCursorPosition();
        const line = editor.getLine(position.line) ?? '';
        if (
          line.slice(0, position.column).trim() === '' &&
          line.slice(position.column).trim() === ''
        ) {
          void app.commands.execute(INVOKE);
        }
      }, provider.debounceMs);
    },
    true
  );
}
