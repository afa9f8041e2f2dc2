/**
 * Our part of JupyterLab's inline completer settings (Settings Editor → Inline Completer →
 * Codestral), beside the core's own for every provider: enabled, debounce, timeout.
 */
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { MAX_TOKENS } from './contract';

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

/**
 * The core's debounce for our provider (ms). The server answers from a warm cache in well under
 * this: wait for a pause in typing, not for every keystroke.
 */
export const DEFAULT_DEBOUNCE_MS = 200;

/** What the core hands `configure`: our settings and its own for this provider. */
export type ProviderSettings = Partial<ICodestralSettings> & {
  enabled?: boolean;
  debouncerDelay?: number;
};

/** The provider's `schema`: our settings, and the defaults of the core's. */
export function settingsSchema(): ISettingRegistry.IProperty {
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
        description: "The server's max_tokens bounds it.",
        type: 'number',
        minimum: 1,
        maximum: MAX_TOKENS
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
          'When the cursor enters a code cell, or a cell has run, let the model read the notebook ahead of the first keystroke; when a cell raises, read its Fix ahead (local models).',
        type: 'boolean'
      }
    },
    default: {
      enabled: true,
      debouncerDelay: DEFAULT_DEBOUNCE_MS,
      timeout: 20000,
      autoFillInMiddle: true,
      ...DEFAULT_SETTINGS
    }
  };
}
