import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  AcceptanceRow,
  CompleteRequest,
  EditRequest,
  EditStreamEvent,
  Status,
  StreamEvent
} from './contract';
import { CompletionFailure, NdjsonDecoder, failureFromReply } from './protocol';

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
  complete(
    body: CompleteRequest,
    signal: AbortSignal
  ): AsyncGenerator<StreamEvent, void, undefined> {
    return this.stream<StreamEvent>('complete', body, signal);
  }

  /** Stream an edit (rewrite, fix, document): the replacement as it is written, then its done event. */
  edit(body: EditRequest, signal: AbortSignal): AsyncGenerator<EditStreamEvent, void, undefined> {
    return this.stream<EditStreamEvent>('edit', body, signal);
  }

  private async *stream<Event extends StreamEvent | EditStreamEvent>(
    endpoint: string,
    body: CompleteRequest | EditRequest,
    signal: AbortSignal
  ): AsyncGenerator<Event, void, undefined> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        this.url(endpoint),
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
    const decoder = new NdjsonDecoder<Event>();
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

  /** Read the whole reply of a prefetch (warms the model's cache; no text): a completion's, or an edit's. */
  async prefetch(
    body: CompleteRequest | EditRequest,
    signal: AbortSignal,
    endpoint: 'complete' | 'edit' = 'complete'
  ): Promise<void> {
    try {
      await ServerConnection.makeRequest(
        this.url(endpoint),
        { method: 'POST', body: JSON.stringify(body), signal },
        this.settings
      );
    } catch {
      // A prefetch is only a hint: failures show up on the next completion.
    }
  }

  /** What became of the suggestions shown since the last report (kept in the server's usage table). */
  async acceptance(rows: AcceptanceRow[]): Promise<void> {
    const response = await ServerConnection.makeRequest(
      this.url('acceptance'),
      { method: 'POST', body: JSON.stringify({ rows }) },
      this.settings
    );
    if (!response.ok) {
      throw failureFromReply(response.status, response.statusText, await response.text());
    }
  }

  /** The server's state; with `path`, also whether the course policy allows completions there. */
  async status(path?: string | null): Promise<Status> {
    const query = path ? `?path=${encodeURIComponent(path)}` : '';
    const response = await ServerConnection.makeRequest(
      this.url('status') + query,
      { method: 'GET' },
      this.settings
    );
    if (!response.ok) {
      throw failureFromReply(response.status, response.statusText, await response.text());
    }
    return (await response.json()) as Status;
  }
}
