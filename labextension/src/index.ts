import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { CodestralClient } from './client';
import { CodestralProvider, DEFAULT_SETTINGS, ICodestralSettings } from './provider';
import { CodestralStatus } from './status';

const PLUGIN_ID = 'jupyter-codestral:plugin';
const STATUS_POLL_MS = 5000;

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Streaming fill-in-the-middle inline completions from the jupyter_codestral server extension.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [ISettingRegistry, IStatusBar, INotebookTracker],
  activate: async (
    app: JupyterFrontEnd,
    manager: ICompletionProviderManager,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    notebooks: INotebookTracker | null
  ) => {
    const client = new CodestralClient(app.serviceManager.serverSettings);
    const provider = new CodestralProvider(client);
    manager.registerInlineProvider(provider);

    let settings: ISettingRegistry.ISettings | null = null;
    const apply = () => {
      provider.settings = {
        ...DEFAULT_SETTINGS,
        ...((settings?.composite ?? {}) as Partial<ICodestralSettings>)
      };
      status.enabled = provider.settings.enabled;
    };
    const status = new CodestralStatus(() => {
      const enabled = !provider.settings.enabled;
      if (settings) {
        void settings.set('enabled', enabled);
      } else {
        provider.settings = { ...provider.settings, enabled };
        status.enabled = enabled;
      }
    });
    if (settingRegistry) {
      try {
        settings = await settingRegistry.load(PLUGIN_ID);
        settings.changed.connect(apply);
      } catch (error) {
        console.warn('jupyter-codestral: settings could not be loaded', error);
      }
    }
    apply();

    provider.activity.connect((_, activity) => {
      status.activity = activity;
      if (activity.state !== 'working') {
        void refresh();
      }
    });
    const refresh = async () => {
      try {
        status.server = await client.status();
      } catch (error) {
        status.unreachable = `The jupyter_codestral server extension does not answer: ${(error as Error).message}`;
      }
    };
    void refresh();
    window.setInterval(() => void refresh(), STATUS_POLL_MS);

    if (statusBar) {
      statusBar.registerStatusItem('jupyter-codestral:status', {
        item: status,
        align: 'left',
        rank: 100
      });
    }

    // Warm the model's cache when the cursor enters a cell, so the first
    // keystroke there does not pay for reading the notebook.
    if (notebooks) {
      let timer = 0;
      notebooks.activeCellChanged.connect(() => {
        window.clearTimeout(timer);
        const panel = notebooks.currentWidget;
        if (panel) {
          timer = window.setTimeout(() => provider.prefetch(panel), 300);
        }
      });
    }
  }
};

export default plugin;
