import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IEditorLanguageRegistry } from '@jupyterlab/codemirror';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Poll } from '@lumino/polling';

import { CodestralClient } from './client';
import { addEditingCommands, watchTyping } from './editing';
import { addEditCommands } from './edits';
import { CodestralProvider } from './provider';
import { CodestralStatus } from './status';
import { enteringPrefetchDelay } from './timing';

/** JupyterLab's inline completer's command that accepts the suggestion shown (Tab). */
const ACCEPT = 'inline-completer:accept';
/** How often what became of the suggestions is reported to the server. */
const ACCEPTANCE_REPORT_MS = 5000;

/** JupyterLab's inline completer plugin: its settings hold each provider's, ours included. */
const INLINE_COMPLETER = '@jupyterlab/completer-extension:inline-completer';
type ProviderSettings = Record<string, Record<string, unknown> | undefined>;

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-codestral:plugin',
  description:
    'Streaming fill-in-the-middle inline completions from the jupyter_codestral server extension.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [
    ISettingRegistry,
    IStatusBar,
    INotebookTracker,
    IEditorLanguageRegistry,
    ICommandPalette
  ],
  activate: async (
    app: JupyterFrontEnd,
    manager: ICompletionProviderManager,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    notebooks: INotebookTracker | null,
    languages: IEditorLanguageRegistry | null,
    palette: ICommandPalette | null
  ) => {
    const client = new CodestralClient(app.serviceManager.serverSettings);
    const provider = new CodestralProvider(client, languages);
    manager.registerInlineProvider(provider);
    addEditingCommands(app, provider);
    watchTyping(app, provider);
    // What becomes of the suggestions: Tab is the inline completer's own accept command.
    app.commands.commandExecuted.connect((_, { id }) => {
      if (id === ACCEPT) {
        provider.accepted('whole');
      }
    });
    window.setInterval(() => {
      const rows = provider.acceptance.take();
      if (rows.length) {
        void client.acceptance(rows).catch(error => console.warn('jupyter-codestral:', error));
      }
    }, ACCEPTANCE_REPORT_MS);

    // The status bar item turns the provider on and off through the inline
    // completer's own setting for it (one switch, also in the Settings Editor).
    let completerSettings: ISettingRegistry.ISettings | null = null;
    const status = new CodestralStatus(() => {
      const enabled = !status.enabled;
      status.enabled = enabled;
      provider.enabled = enabled;
      if (completerSettings) {
        const user = (completerSettings.user.providers ?? {}) as ProviderSettings;
        const ours = user[provider.identifier] ?? {};
        void completerSettings.set('providers', {
          ...user,
          [provider.identifier]: { ...ours, enabled }
        });
      }
    });
    if (settingRegistry) {
      // After the completer's own plugin has registered how its settings are composed.
      void app.restored
        .then(() => settingRegistry.load(INLINE_COMPLETER))
        .then(
          settings => {
            completerSettings = settings;
            const follow = () => {
              const providers = (settings.composite.providers ?? {}) as ProviderSettings;
              status.enabled = providers[provider.identifier]?.enabled !== false;
            };
            settings.changed.connect(follow);
            follow();
          },
          error =>
            console.warn(
              'jupyter-codestral: the inline completer settings could not be loaded',
              error
            )
        );
    }

    // The server's state (model loading, rate limits, configuration errors):
    // polled with back-off while the tab is visible, at once after a failure.
    const poll = new Poll({
      factory: async () => {
        try {
          status.server = await client.status(notebooks?.currentWidget?.context.path);
        } catch (error) {
          status.unreachable = `The jupyter_codestral server extension does not answer: ${(error as Error).message}`;
          throw error;
        }
      },
      frequency: { interval: 5000, backoff: true, max: 60_000 },
      standby: 'when-hidden',
      name: 'jupyter-codestral:status'
    });
    // The course policy is per notebook: ask again when another one comes to the front.
    notebooks?.currentChanged.connect(() => void poll.refresh());
    provider.activity.connect((_, activity) => {
      status.activity = activity;
      if (activity.state === 'error') {
        void poll.refresh();
      }
    });

    if (notebooks) {
      addEditCommands({
        app,
        client,
        provider,
        notebooks,
        palette,
        statusBar,
        status: () => status.server
      });
    }

    if (statusBar) {
      statusBar.registerStatusItem('jupyter-codestral:status', {
        item: status,
        align: 'left',
        rank: 100
      });
    }

    // Warm the model's cache when the cursor enters a cell, so the first
    // keystroke there does not pay for reading the notebook (at once when a
    // run moved it there); and again when a cell has run: the kernel's answer
    // changes the prompt of the cell the user moved on to.
    if (notebooks) {
      let timer = 0;
      let ranAt: number | null = null;
      notebooks.activeCellChanged.connect(() => {
        window.clearTimeout(timer);
        const panel = notebooks.currentWidget;
        if (panel) {
          const delay = enteringPrefetchDelay(ranAt === null ? null : performance.now() - ranAt);
          timer = window.setTimeout(() => provider.prefetch(panel), delay);
        }
      });
      NotebookActions.executionScheduled.connect(() => {
        ranAt = performance.now();
      });
      NotebookActions.executed.connect((_, { notebook }) => {
        ranAt = performance.now(); // a markdown cell "runs" at once, before the cursor moves
        const panel = notebooks.currentWidget;
        if (panel && panel.content === notebook) {
          window.clearTimeout(timer);
          provider.prefetch(panel);
        }
      });
    }
  }
};

export default plugin;
