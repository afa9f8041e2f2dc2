import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  CompletionFailure,
  ICompletionBody,
  IStreamEvent,
  NdjsonDecoder,
  failureFromReply
} from './protocol';

export interface IServerStatus {
  backend: string;
  model: string;
  base_url: string | null;
  state: string;
  ready: boolean;
  progress?: number | null;
  rate_limited_until?: number | null;
  config_error?: string | null;
  last_error?: { kind: string; message: string; at: number } | null;
  latency?: {
    first_token_ms: { median: number | null; last: number | null };
    total_ms: { median: number | null; last: number | null };
  };
  /** Asked with a path: whether the course policy allows completions there. */
  policy?: { path: string; allowed: boolean; reason: string | null };
  /** With several backends: each one's state (a failed one is skipped until `skipped_until`). */
  backends?: Record<
    string,
    {
      kind: string;
      state: string;
      skipped_until: number | null;
      last_error: { kind: string; message: string } | null;
    }
  >;
  /** Whether prompts are redacted before they are sent, and how many secrets were. */
  redaction?: { on: boolean; redacted: number };
  /** Today's requests and tokens per backend, and their cost where prices are set. */
  usage?: IUsageDay;
}

/** One backend's (or the total) usage over a day, as `codestral/status` reports it. */
export interface IUsageRow {
  requests: number;
  cancelled: number;
  prompt_tokens: number;
  completion_tokens: number;
  estimated: number;
  cost: number | null;
}

export interface IUsageDay {
  date: string;
  backends: Record<string, IUsageRow>;
  total: IUsageRow;
}

/**
 * Talks to the server extension with the server's own connection settings,
 * so the token and XSRF cookie are handled like every JupyterLab request.
 */
export class CodestralClient {
  constructor(
    private readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  private url(endpoint: string): string {
    return URLExt.join(this.settings.baseUrl, 'codestral', endpoint);
  }

  /** Stream a completion; aborting `signal` closes the request (the server cancels the backend). */
  async *complete(
    body: ICompletionBody,
    signal: AbortSignal
  ): AsyncGenerator<IStreamEvent, void, undefined> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        this.url('complete'),
        { method: 'POST', body: JSON.stringify(body), signal },
        this.settings
      );
    } catch (error) {
      if (signal.aborted) {
        return;
      }
      throw new CompletionFailure(
        'unreachable',
        `Cannot reach the Jupyter server: ${(error as Error).message ?? error}`
      );
    }
    if (!response.ok) {
      throw failureFromReply(response.status, response.statusText, await response.text());
    }
    const decoder = new NdjsonDecoder();
    if (!response.body) {
      yield* decoder.push(await response.text());
      yield* decoder.flush();
      return;
    }
    const reader = response.body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          break;
        }
        yield* decoder.push(value);
      }
      yield* decoder.flush();
    } catch (error) {
      if (!signal.aborted) {
        throw new CompletionFailure(
          'unreachable',
          `The connection to the Jupyter server broke: ${(error as Error).message ?? error}`
        );
      }
    } finally {
      reader.releaseLock();
    }
  }

  /** Read the whole reply of a prefetch (warms the model's cache; no text). */
  async prefetch(body: ICompletionBody, signal: AbortSignal): Promise<void> {
    try {
      await ServerConnection.makeRequest(
        this.url('complete'),
        { method: 'POST', body: JSON.stringify(body), signal },
        this.settings
      );
    } catch {
      // A prefetch is only a hint: failures show up on the next completion.
    }
  }

  /** The server's state; with `path`, also whether the course policy allows completions there. */
  async status(path?: string | null): Promise<IServerStatus> {
    const query = path ? `?path=${encodeURIComponent(path)}` : '';
    const response = await ServerConnection.makeRequest(
      this.url('status') + query,
      { method: 'GET' },
      this.settings
    );
    if (!response.ok) {
      throw failureFromReply(response.status, response.statusText, await response.text());
    }
    return (await response.json()) as IServerStatus;
  }
}
