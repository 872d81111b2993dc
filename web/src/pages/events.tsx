// Events, newest first, filtered by kind or subject as the user types.
import { useState } from 'preact/hooks';
import { api } from '../api';
import { usePoll } from '../hooks';
import { clock } from '../format';
import type { Event } from '../types';

export function EventsPage() {
  const events = usePoll(
    (signal) => api<{ events: Event[] }>('/v1/events?order=desc&limit=500', { signal }),
    3000,
    [],
  );
  const [filter, setFilter] = useState('');
  const f = filter.trim().toLowerCase();
  const rows = (events.data?.events ?? []).filter(
    (e) =>
      !f ||
      e.kind.toLowerCase().includes(f) ||
      e.subject.toLowerCase().includes(f) ||
      e.message.toLowerCase().includes(f),
  );
  return (
    <>
      <h1>Events</h1>
      <div class="field inline">
        <label for="ev-filter">Filter</label>
        <input
          id="ev-filter"
          type="search"
          placeholder="kind, subject or text"
          value={filter}
          onInput={(e) => setFilter((e.target as HTMLInputElement).value)}
        />
      </div>
      {events.error && (
        <p class="error" role="alert">
          {events.error}
        </p>
      )}
      <table class="events-table">
        <thead>
          <tr>
            <th scope="col">Time</th>
            <th scope="col">Kind</th>
            <th scope="col">Subject</th>
            <th scope="col">Message</th>
          </tr>
        </thead>
        <tbody>
          {rows.map((e) => (
            <tr>
              <td>
                <time dateTime={new Date(e.time_ms).toISOString()}>{clock(e.time_ms)}</time>
              </td>
              <td class="kind">{e.kind}</td>
              <td>{e.subject}</td>
              <td>{e.message}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {rows.length === 0 && <p>No events{f ? ' match' : ''}.</p>}
    </>
  );
}
