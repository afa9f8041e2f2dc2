import { Widget } from '@lumino/widgets';

import { BackendState, OffScope, Status, UsageDay } from './contract';
import { IActivity } from './provider';

/** Where completions are off, as the bar says it. */
const OFF_WHERE: Record<OffScope, string> = {
  cell: 'off in this cell',
  notebook: 'off in this notebook',
  course_policy: 'off in this notebook (course policy)'
};

/** What an HTTP backend's state says, in the bar (its last error says why, on hover). */
const PROBLEMS: Partial<Record<BackendState, string>> = {
  unauthorized: 'key refused',
  unreachable: 'backend unreachable',
  failing: 'backend failing',
  error: 'error',
  failed: 'embedded model failed'
};

/**
 * The status bar item: backend and model, what it is doing, the last
 * latency. Clicking it turns completions on or off.
 */
export class CodestralStatus extends Widget {
  private _server: Status | null = null;
  private _activity: IActivity = { state: 'idle' };
  private _enabled = true;
  private _unreachable: string | null = null;

  constructor(private readonly onToggle: () => void) {
    super({ node: document.createElement('div') });
    this.addClass('jp-CodestralStatus');
    this.node.setAttribute('role', 'button');
    this.node.addEventListener('click', () => this.onToggle());
    this.render();
  }

  get enabled(): boolean {
    return this._enabled;
  }

  set enabled(value: boolean) {
    this._enabled = value;
    this.render();
  }

  /** The server's last status (with the current notebook's course policy). */
  get server(): Status | null {
    return this._server;
  }

  set server(status: Status | null) {
    this._server = status;
    this._unreachable = null;
    this.render();
  }

  set unreachable(message: string) {
    this._unreachable = message;
    this.render();
  }

  set activity(activity: IActivity) {
    this._activity = { ...this._activity, ...activity };
    if (activity.state !== 'error' && activity.state !== 'off') {
      this._activity.message = undefined;
    }
    this.render();
  }

  /** The one-line state shown in the bar, and the reason shown on hover. */
  describe(): { label: string; state: string; detail: string } {
    const server = this._server;
    if (!this._enabled) {
      return {
        label: 'Codestral: off',
        state: 'off',
        detail: 'Completions are off. Click to turn them on.'
      };
    }
    const policy = server?.policy;
    if (policy && !policy.allowed) {
      return {
        label: 'Codestral: off in this notebook (course policy)',
        state: 'policy',
        detail: policy.reason ?? 'Completions are off in this notebook (course policy).'
      };
    }
    if (this._activity.state === 'off') {
      const where = OFF_WHERE[this._activity.offScope ?? 'notebook'];
      return {
        label: `Codestral: ${where}`,
        state: 'policy',
        detail: this._activity.message ?? ''
      };
    }
    if (this._unreachable) {
      return { label: 'Codestral: error', state: 'error', detail: this._unreachable };
    }
    if (!server) {
      return { label: 'Codestral', state: 'starting', detail: 'Asking the server for its state…' };
    }
    const who = `${server.backend} · ${server.model}`;
    const until = server.rate_limited_until ? server.rate_limited_until * 1000 : 0;
    if (until > Date.now()) {
      const when = new Date(until).toLocaleTimeString();
      return {
        label: `Codestral: rate limited until ${when}`,
        state: 'error',
        detail: `${who}: rate limited until ${when}`
      };
    }
    if (server.config_error) {
      return {
        label: 'Codestral: configuration error',
        state: 'error',
        detail: server.config_error
      };
    }
    if (this._activity.state === 'error' && this._activity.message) {
      return {
        label: 'Codestral: error',
        state: 'error',
        detail: `${who}: ${this._activity.message}`
      };
    }
    const skipped = Object.entries(server.backends ?? {}).filter(
      ([, b]) => b.state === 'cooling_down' && b.skipped_until
    );
    if (skipped.length && server.ready) {
      // One backend is out for a while; another answers meanwhile.
      const [name, b] = skipped[0];
      const until = new Date((b.skipped_until as number) * 1000).toLocaleTimeString();
      const what = b.last_error?.kind === 'rate_limited' ? 'rate-limited' : 'unavailable';
      const using =
        this._activity.backend && this._activity.backend !== name
          ? this._activity.backend
          : 'the next backend';
      return {
        label: `Codestral: ${name} ${what} until ${until} · using ${using}`,
        state: 'fallback',
        detail: `${name}: ${b.last_error?.message ?? what}`
      };
    }
    const problem = PROBLEMS[server.state];
    if (problem) {
      const reason = server.notice ?? server.last_error?.message ?? problem;
      return { label: `Codestral: ${problem}`, state: 'error', detail: `${who}: ${reason}` };
    }
    // The embedded model runs more safely than configured (it crashed with faster CPU kernels), or a
    // named one failed while another answers: said in a sentence, on hover.
    const notice =
      server.notice ?? Object.values(server.backends ?? {}).find(b => b.notice)?.notice ?? null;
    if (!server.ready) {
      const progress =
        typeof server.progress === 'number' ? ` ${Math.round(server.progress * 100)}%` : '';
      return {
        label: `Codestral: loading model${progress}`,
        state: 'loading',
        detail: `${who}: ${server.state}${progress}`
      };
    }
    const latency = this._activity.firstTokenMs ?? server.latency?.first_token_ms.last ?? null;
    const ms = latency === null || latency === undefined ? '' : ` ${Math.round(latency)} ms`;
    const caveat = notice ? ' · safe mode' : '';
    const said = notice ? `\n${notice}` : '';
    if (this._activity.state === 'working') {
      return {
        label: `Codestral: working…${ms}${caveat}`,
        state: 'working',
        detail: `${who}: completing${said}`
      };
    }
    return {
      label: `Codestral: ready${ms}${caveat}`,
      state: 'ready',
      detail: `${who}: ready. Click to turn completions off.${said}`
    };
  }

  private render(): void {
    const { label, state, detail } = this.describe();
    this.node.textContent = label;
    const usage = this._server?.usage ? usageLines(this._server.usage) : [];
    this.node.title = [detail, ...usage].join('\n');
    this.node.dataset.state = state;
  }
}

/** A token count as people read it: 950, 12.3k, 4.5M. */
function count(n: number): string {
  if (n < 1000) {
    return String(n);
  }
  return n < 1_000_000 ? `${(n / 1000).toFixed(1)}k` : `${(n / 1_000_000).toFixed(1)}M`;
}

/** Today's usage, a line per backend, and what became of the suggestions shown, for the tooltip. */
export function usageLines(day: UsageDay): string[] {
  const rows = Object.entries(day.backends).filter(([, row]) => row.requests > 0);
  const lines = rows.map(([name, row]) => {
    const cost = row.cost === null ? '' : `, cost ${row.cost.toFixed(4)}`;
    const cancelled = row.cancelled ? ` (${row.cancelled} cancelled)` : '';
    const estimated = row.estimated ? ' (some estimated)' : '';
    return (
      `  ${name}: ${row.requests} requests${cancelled}, ` +
      `${count(row.prompt_tokens)} tokens in, ${count(row.completion_tokens)} out${estimated}${cost}`
    );
  });
  const usage = lines.length ? [`Usage today (${day.date}):`, ...lines] : [];
  const accepted = day.acceptance.total;
  if (accepted.shown) {
    const parts = accepted.accepted_word + accepted.accepted_line;
    usage.push(
      `Accepted today: ${accepted.accepted} of ${accepted.shown} suggestions shown ` +
        `(${Math.round((accepted.rate ?? 0) * 100)}%)` +
        (parts ? `, ${parts} partly` : '') +
        `, ${count(accepted.chars_accepted)} characters`
    );
  }
  return usage;
}
