/**
 * What becomes of the suggestions shown: counted in the browser, reported to the server every few
 * seconds (`POST codestral/acceptance`), where the usage table keeps them per day, backend and
 * route. Nothing goes anywhere else. Pure: unit-tested in Node.
 */
import { AcceptanceRow, RouteKind } from './contract';

/** A suggestion as counted: the route and the backend that made it, once its reply says. */
export interface ICounted {
  route?: RouteKind;
  backend?: string;
}

type Counts = Omit<AcceptanceRow, 'backend' | 'route'>;
type Count = keyof Counts;

interface IEvent {
  suggestion: ICounted;
  count: Count;
  chars: number;
}

export class AcceptanceCounter {
  private _events: IEvent[] = [];
  private _shown = new WeakSet<ICounted>();

  /** `suggestion` was shown (counted once, however long it stays and streams). */
  shown(suggestion: ICounted): void {
    if (!this._shown.has(suggestion)) {
      this._shown.add(suggestion);
      this._events.push({ suggestion, count: 'shown', chars: 0 });
    }
  }

  /** `chars` of `suggestion` were accepted: all of it, or its next word or line. */
  accepted(suggestion: ICounted, chars: number, how: 'whole' | 'word' | 'line'): void {
    const count: Count =
      how === 'whole' ? 'accepted' : how === 'word' ? 'accepted_word' : 'accepted_line';
    this._events.push({ suggestion, count, chars });
  }

  /** `suggestion` was dismissed, or typed over. */
  dismissed(suggestion: ICounted): void {
    this._events.push({ suggestion, count: 'dismissed', chars: 0 });
  }

  /**
   * The counts to report, by backend and route, and forgotten here; those of suggestions whose
   * reply has not said yet who made them wait for the next report.
   */
  take(): AcceptanceRow[] {
    const rows = new Map<string, AcceptanceRow>();
    const waiting: IEvent[] = [];
    for (const event of this._events) {
      const { backend, route } = event.suggestion;
      if (!backend || !route) {
        waiting.push(event);
        continue;
      }
      const key = `${backend}\u0000${route}`;
      const row = rows.get(key) ?? { backend, route };
      rows.set(key, row);
      row[event.count] = (row[event.count] ?? 0) + 1;
      if (event.chars) {
        row.chars_accepted = (row.chars_accepted ?? 0) + event.chars;
      }
    }
    this._events = waiting;
    return [...rows.values()];
  }
}
