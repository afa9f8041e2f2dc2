/**
 * The wire format of `POST codestral/complete`: building request bodies and
 * reading the NDJSON stream. Pure functions, no JupyterLab imports, so they
 * are unit-tested in plain Node.
 */

import {
  Cell,
  CompleteRequest,
  DoneEvent,
  EditDoneEvent,
  EditKind,
  EditRequest,
  EditStreamEvent,
  ErrorInfo,
  ErrorKind,
  ErrorReply,
  StreamEvent
} from './contract';

/** A cell as the frontend sends it (the contract also allows nbformat's list of lines). */
export interface ICellSource extends Cell {
  source: string;
}

/** The notebook's own switch, as nbformat stores it in the notebook's metadata. */
export type INotebookSettings = NonNullable<NonNullable<CompleteRequest['metadata']>['codestral']>;

export interface IRequestOptions {
  path?: string;
  language?: string;
  maxTokens?: number;
  singleLine?: boolean;
  kernelId?: string | null;
  prefetch?: boolean;
  /** The notebook's `metadata.codestral`, when it has one. */
  notebook?: INotebookSettings | null;
}

/** A stream's failure line. */
export function isError(event: StreamEvent | EditStreamEvent): event is ErrorReply {
  return 'error' in event;
}

/** A stream's last line, when it succeeded. */
export function isDone(event: StreamEvent): event is DoneEvent {
  return 'done' in event;
}

/** An edit's stream's last line, when it succeeded. */
export function isEditDone(event: EditStreamEvent): event is EditDoneEvent {
  return 'done' in event;
}

/**
 * Convert an editor offset (UTF-16 code units, as JavaScript counts) into
 * the code-point offset the server expects (as Python counts).
 */
export function codePointOffset(text: string, utf16Offset: number): number {
  let count = 0;
  for (let i = 0; i < utf16Offset && i < text.length; i++) {
    const code = text.charCodeAt(i);
    // A high surrogate followed by a low one is a single code point.
    if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        i++;
      }
    }
    count++;
  }
  return count;
}

function common(options: IRequestOptions): Partial<CompleteRequest> {
  const body: Partial<CompleteRequest> = {};
  if (options.path) {
    body.path = options.path;
  }
  if (options.language) {
    body.language = options.language;
  }
  if (options.maxTokens) {
    body.max_tokens = options.maxTokens;
  }
  if (options.singleLine) {
    body.single_line = true;
  }
  if (options.kernelId) {
    body.kernel_id = options.kernelId;
  }
  if (options.prefetch) {
    body.prefetch = true;
  }
  if (options.notebook) {
    body.metadata = { codestral: options.notebook };
  }
  return body;
}

/** The body for a completion in a notebook: every cell's source, no outputs. */
export function notebookBody(
  cells: ICellSource[],
  cellIndex: number,
  utf16Offset: number,
  options: IRequestOptions = {}
): CompleteRequest {
  const source = cells[cellIndex]?.source ?? '';
  return {
    cells,
    cell_index: cellIndex,
    cursor: codePointOffset(source, utf16Offset),
    stream: !options.prefetch,
    ...common(options)
  };
}

/** The body for a completion in a plain file editor. */
export function fileBody(
  text: string,
  utf16Offset: number,
  options: IRequestOptions = {}
): CompleteRequest {
  return {
    text,
    cursor: codePointOffset(text, utf16Offset),
    stream: !options.prefetch,
    ...common(options)
  };
}

/**
 * The language name the server understands, from the name of the editor's
 * language (JupyterLab's language registry) or the notebook's kernel.
 */
export function serverLanguage(name: string | null | undefined, fallback = 'python'): string {
  const lower = (name ?? '').trim().toLowerCase();
  if (!lower) {
    return fallback;
  }
  return lower === 'ipython' ? 'python' : lower;
}

/** A notebook cell as the provider sees it: its model's id, type, text and last run. */
export interface INotebookCell extends ICellSource {
  id: string;
}

/**
 * The body for a completion in the notebook cell whose model id is
 * `activeId` (the cell whose editor asked), or null when the request's text
 * is not that cell's text (the focus moved on). Cells are never looked up by
 * their text: two cells may hold the same.
 */
export function notebookRequestBody(
  cells: INotebookCell[],
  activeId: string,
  request: { text: string; offset: number },
  options: IRequestOptions = {}
): CompleteRequest | null {
  const index = cells.findIndex(cell => cell.id === activeId);
  if (index < 0 || cells[index].source !== request.text) {
    return null;
  }
  const sources = cells.map(({ id: _id, ...cell }) => cell);
  return notebookBody(sources, index, request.offset, options);
}

/** What an edit is asked about: the cell's range (UTF-16 offsets, as the editor counts; none: the whole cell). */
export interface IEditTarget {
  cells: ICellSource[];
  cellIndex: number;
  kind: EditKind;
  /** The edited cell's nbformat outputs: only its errors are sent (fix reads the last one). */
  outputs?: readonly { output_type: string }[];
  selection?: { start: number; end: number } | null;
  instruction?: string;
}

/** The body of `POST codestral/edit`. */
export function editBody(target: IEditTarget, options: IRequestOptions = {}): EditRequest {
  const cells: Cell[] = target.cells.map(cell => ({ ...cell }));
  const source = target.cells[target.cellIndex]?.source ?? '';
  const errors = (target.outputs ?? []).filter(output => output.output_type === 'error');
  if (errors.length) {
    cells[target.cellIndex] = { ...cells[target.cellIndex], outputs: errors.map(e => ({ ...e })) };
  }
  const body: EditRequest = {
    cells,
    cell_index: target.cellIndex,
    kind: target.kind,
    stream: true
  };
  const selection = target.selection;
  if (selection && selection.end > selection.start) {
    body.selection = {
      start: codePointOffset(source, selection.start),
      end: codePointOffset(source, selection.end)
    };
  }
  if (target.instruction) {
    body.instruction = target.instruction;
  }
  const { path, language, kernel_id, metadata } = common(options);
  return { ...body, path, language, kernel_id, metadata };
}

/**
 * Splits a byte stream of newline-delimited JSON into events. Lines can
 * arrive split across chunks; a partial line is kept until its end arrives.
 */
export class NdjsonDecoder<Event extends StreamEvent | EditStreamEvent = StreamEvent> {
  private _buffer = '';
  private _decoder = new TextDecoder();

  push(chunk: Uint8Array | string): Event[] {
    this._buffer +=
      typeof chunk === 'string' ? chunk : this._decoder.decode(chunk, { stream: true });
    const lines = this._buffer.split('\n');
    this._buffer = lines.pop() ?? '';
    return lines.filter(line => line.trim()).map(line => parseLine<Event>(line));
  }

  /** The stream ended: whatever is left must be one last whole line. */
  flush(): Event[] {
    const rest = this._buffer + this._decoder.decode();
    this._buffer = '';
    return rest.trim() ? [parseLine<Event>(rest)] : [];
  }
}

function parseLine<Event extends StreamEvent | EditStreamEvent>(line: string): Event {
  try {
    return JSON.parse(line) as Event;
  } catch {
    const failure: ErrorReply = {
      error: {
        kind: 'bad_reply',
        message: `The server sent a line that is not JSON: ${line.slice(0, 80)}`
      }
    };
    return failure as Event;
  }
}

/** An error the server (or the network) reported, with its kind. */
export class CompletionFailure extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    readonly retryAfter?: number
  ) {
    super(message);
  }
}

/** Read an error reply's body; fall back to the HTTP status text. */
export function failureFromReply(
  status: number,
  statusText: string,
  bodyText: string
): CompletionFailure {
  try {
    const body = JSON.parse(bodyText);
    if (body?.error?.message) {
      return new CompletionFailure(
        (body.error.kind as ErrorKind | undefined) ?? 'http_error',
        body.error.message,
        body.error.retry_after
      );
    }
    if (body?.message) {
      return new CompletionFailure('http_error', body.message);
    }
  } catch {
    // not JSON: use the status line
  }
  return new CompletionFailure(
    'http_error',
    `The completion server answered ${status} ${statusText}`.trim()
  );
}

/**
 * Shows each distinct error once: the same failure on every keystroke would
 * bury the user. An error is shown again after `quietMs` without it.
 */
export class ErrorGate {
  private _last = '';
  private _lastAt = 0;

  constructor(private readonly quietMs = 60_000) {}

  shouldShow(error: ErrorInfo, now = Date.now()): boolean {
    const key = error.kind;
    const repeat = key === this._last && now - this._lastAt < this.quietMs;
    this._last = key;
    this._lastAt = now;
    return !repeat;
  }

  /** A success ends the streak, so the next failure is shown. */
  reset(): void {
    this._last = '';
  }
}

/**
 * "Newest request wins": each keystroke begins a request and aborts the one
 * before it, so the server cancels its backend call and stale text is never
 * shown.
 */
export class LatestRequest {
  private _ticket = 0;
  private _controller = new AbortController();

  begin(): { ticket: number; signal: AbortSignal } {
    this._controller.abort();
    this._controller = new AbortController();
    return { ticket: ++this._ticket, signal: this._controller.signal };
  }

  isLatest(ticket: number): boolean {
    return ticket === this._ticket;
  }
}
