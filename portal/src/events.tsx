import { useEffect, useRef, useState } from 'preact/hooks';
import { api, Attempt, eventType, fmtTime, forgetKey, HeraldEvent, openStream, Page, qs } from './api';

type Tail = { id: string; type: string; at: string };

/// The live tail: the tenant's WebSocket stream, newest first, announced
/// politely to screen readers.
function LiveTail({ onOpen, onArrive }: { onOpen: (id: string) => void; onArrive: () => void }) {
  const [on, setOn] = useState(true);
  const [filter, setFilter] = useState('');
  const [applied, setApplied] = useState('');
  const [state, setState] = useState('connecting');
  const [items, setItems] = useState<Tail[]>([]);
  const retry = useRef(0);
  const arrive = useRef(onArrive);
  arrive.current = onArrive;

  useEffect(() => {
    if (!on) {
      setState('paused');
      return;
    }
    let ws: WebSocket | null = null;
    let closed = false;
    let timer: number | undefined;
    let cursor: string | null = null;
    const connect = () => {
      setState('connecting');
      ws = openStream(applied);
      ws.onopen = () => {
        retry.current = 0;
        setState('live');
      };
      ws.onmessage = (m) => {
        const e = JSON.parse(m.data);
        cursor = e.cursor;
        setItems((xs) => [{ id: e.id, type: e.type, at: e.occurred_at }, ...xs.filter((x) => x.id !== e.id)].slice(0, 50));
        arrive.current();
      };
      ws.onclose = (ev) => {
        if (closed) return;
        if (ev.code === 4001) {
          // The key was revoked: back to the sign-in page.
          forgetKey();
          window.dispatchEvent(new Event('herald:unauthorized'));
          return;
        }
        setState(ev.code === 1006 && retry.current > 2 ? 'disconnected: check your key and filter' : 'reconnecting');
        retry.current += 1;
        timer = window.setTimeout(connect, Math.min(10000, 500 * 2 ** retry.current));
        void cursor; // a reconnect starts at the live end; the event list below has the rest
      };
    };
    connect();
    return () => {
      closed = true;
      clearTimeout(timer);
      ws?.close();
    };
  }, [on, applied]);

  return (
    <section class="card" aria-labelledby="tail-title">
      <h3 id="tail-title">Live tail</h3>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          setItems([]);
          setApplied(filter.trim());
        }}
      >
        <label for="tail-filter">Types</label>
        <input id="tail-filter" placeholder="all (e.g. order.*,invoice.paid)" value={filter} onInput={(e) => setFilter((e.target as HTMLInputElement).value)} />
        <button type="submit">Apply</button>
        <button type="button" aria-pressed={!on} onClick={() => setOn(!on)}>
          {on ? 'Pause tail' : 'Resume tail'}
        </button>
      </form>
      <p class="muted small" data-testid="tail-state">
        Stream: {state}
      </p>
      <ol class="plain tail" aria-live="polite" aria-relevant="additions" aria-label="Events as they arrive" data-testid="live-tail">
        {items.map((t) => (
          <li key={t.id}>
            <button class="link" onClick={() => onOpen(t.id)}>
              {t.type}
            </button>{' '}
            <code class="small">{t.id}</code> <span class="muted small">{fmtTime(t.at)}</span>
          </li>
        ))}
      </ol>
      {items.length === 0 && <p class="muted">Waiting for events…</p>}
    </section>
  );
}

function EventDetail({ id, focusToken, onClose }: { id: string; focusToken: number; onClose: () => void }) {
  const [ev, setEv] = useState<(HeraldEvent & { deliveries: Attempt[] }) | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [polls, setPolls] = useState(0);
  const heading = useRef<HTMLHeadingElement>(null);

  async function load() {
    try {
      const e = await api<HeraldEvent & { deliveries: Attempt[] }>('GET', `/integrations/events/${encodeURIComponent(id)}`);
      setEv(e);
      setError(null);
      return e;
    } catch (err) {
      setError((err as Error).message);
      return null;
    }
  }
  useEffect(() => {
    setEv(null);
    load().then((e) => {
      // A fresh event may not have its first attempt yet: look again for a while.
      if (e && e.deliveries.length === 0) setPolls(15);
    });
  }, [id]);
  // Move focus to the event when the user opened it here (not when the tab
  // is merely shown again with an event still open).
  useEffect(() => {
    if (focusToken > 0) heading.current?.focus();
  }, [focusToken]);
  // After a replay, refresh for a while so the new attempt shows up.
  useEffect(() => {
    if (polls <= 0) return;
    const t = setTimeout(() => {
      load();
      setPolls(polls - 1);
    }, 700);
    return () => clearTimeout(t);
  }, [polls]);

  async function replay() {
    setNotice(null);
    try {
      const r = await api('POST', `/integrations/events/${encodeURIComponent(id)}/replay`, {});
      setNotice(`Replay scheduled: ${r.data.length} deliver${r.data.length === 1 ? 'y' : 'ies'}.`);
      setPolls(10);
    } catch (err) {
      setError((err as Error).message);
    }
  }

  return (
    <section class="card" aria-labelledby="event-title" data-testid="event-detail">
      <div class="row spread">
        <h3 id="event-title" tabIndex={-1} ref={heading}>
          Event <code>{id}</code>
        </h3>
        <button class="link" onClick={onClose}>
          Close
        </button>
      </div>
      {error && <p class="error" role="alert">{error}</p>}
      {ev && (
        <>
          <dl class="facts">
            <dt>Type</dt>
            <dd>{eventType(ev)} v{String(ev.schema_version ?? 1)}</dd>
            <dt>Occurred</dt>
            <dd>{fmtTime(ev.occurred_at)}</dd>
            <dt>Received</dt>
            <dd>{fmtTime(ev.received_at)}</dd>
            {ev.dedupe_key && (
              <>
                <dt>Dedupe key</dt>
                <dd>{ev.dedupe_key}</dd>
              </>
            )}
          </dl>
          <details>
            <summary>Payload</summary>
            <pre>{JSON.stringify(ev.payload, null, 2)}</pre>
          </details>
          <div class="row">
            <button onClick={replay}>Replay event</button>
          </div>
          {notice && <p role="status" class="notice">{notice}</p>}
          <h4>Deliveries ({ev.deliveries.length} attempts)</h4>
          {ev.deliveries.length === 0 ? (
            <p>No delivery yet: no active subscription matched, or it is still on its way.</p>
          ) : (
            <ol class="plain deliveries" data-testid="deliveries" aria-label="Delivery attempts, newest first">
              {ev.deliveries.map((a) => (
                <li key={a.id} class="delivery" data-testid="delivery-row">
                  <div class="row">
                    <span class={`badge ${a.outcome}`}>{a.outcome}</span>
                    <span>HTTP {a.status_code ?? '—'}</span>
                    <span>{a.latency_ms != null ? `${a.latency_ms} ms` : '—'}</span>
                    <span>
                      attempt {a.attempt}, {a.trigger}
                    </span>
                    <span class="muted small">{fmtTime(a.created_at)}</span>
                  </div>
                  <dl class="facts small">
                    <dt>Subscription</dt>
                    <dd>
                      <code>{a.subscription_id}</code>
                    </dd>
                    <dt>Delivery</dt>
                    <dd>
                      <code>{a.delivery_id}</code>
                      {a.replay_of && (
                        <>
                          {' '}
                          (replay of <code>{a.replay_of}</code>)
                        </>
                      )}
                    </dd>
                    {a.error && (
                      <>
                        <dt>Error</dt>
                        <dd>
                          <strong>{a.error}</strong> {a.error_message}
                        </dd>
                      </>
                    )}
                    {a.next_attempt_at && (
                      <>
                        <dt>Next attempt</dt>
                        <dd>{fmtTime(a.next_attempt_at)}</dd>
                      </>
                    )}
                  </dl>
                  <details>
                    <summary>Request and response</summary>
                    <p>
                      <strong>POST</strong> <code>{a.url}</code>
                    </p>
                    <p class="small">
                      Request headers: <code>webhook-id</code>, <code>webhook-timestamp</code>, <code>webhook-signature</code>, <code>herald-event-type</code>,{' '}
                      <code>herald-attempt: {a.attempt}</code>, <code>herald-delivery-id: {a.delivery_id}</code>, <code>herald-subscription-id: {a.subscription_id}</code>, plus the subscription's own headers
                      (the delivery log keeps no header values).
                    </p>
                    <p>Response body:</p>
                    <pre data-testid="response-body">{a.response_body ?? '(none)'}</pre>
                  </details>
                </li>
              ))}
            </ol>
          )}
        </>
      )}
    </section>
  );
}

export function Events({ openEvent, setOpenEvent }: { openEvent: string | null; setOpenEvent: (id: string | null) => void }) {
  const [type, setType] = useState('');
  const [applied, setApplied] = useState('');
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const [page, setPage] = useState<Page<HeraldEvent> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const cursor = cursors[cursors.length - 1];
  const [focusToken, setFocusToken] = useState(0);
  const open = (id: string) => {
    setOpenEvent(id);
    setFocusToken((n) => n + 1);
  };

  const reload = useRef<number | undefined>(undefined);
  async function load() {
    try {
      setPage(await api('GET', `/integrations/events${qs({ event_type: applied, limit: 20, cursor })}`));
      setError(null);
    } catch (err) {
      setError((err as Error).message);
    }
  }
  useEffect(() => {
    load();
  }, [applied, cursor]);

  return (
    <div class="split">
      <div>
        <section aria-labelledby="events-title">
          <h2 id="events-title">Events</h2>
          <form
            class="row"
            onSubmit={(e) => {
              e.preventDefault();
              setCursors([null]);
              setApplied(type.trim());
            }}
          >
            <label for="event-type-filter">Event type</label>
            <input id="event-type-filter" placeholder="exact or prefix.*" value={type} onInput={(e) => setType((e.target as HTMLInputElement).value)} />
            <button type="submit">Filter</button>
            <button type="button" onClick={load}>
              Refresh
            </button>
          </form>
          {error && <p class="error" role="alert">{error}</p>}
          {page && page.data.length === 0 && <p>No events{applied ? ` of type ${applied}` : ''}.</p>}
          {page && page.data.length > 0 && (
            <ul class="plain events" data-testid="event-list">
              {page.data.map((e) => (
                <li key={e.id} class={openEvent === e.id ? 'selected' : ''}>
                  <button class="link" onClick={() => open(e.id)}>
                    {eventType(e)}
                  </button>{' '}
                  <code class="small">{e.id}</code> <span class="muted small">{fmtTime(e.received_at)}</span>
                </li>
              ))}
            </ul>
          )}
          <div class="row">
            {cursors.length > 1 && <button onClick={() => setCursors(cursors.slice(0, -1))}>Previous page</button>}
            {page?.next_cursor && <button onClick={() => setCursors([...cursors, page.next_cursor])}>Next page</button>}
          </div>
        </section>
        <LiveTail
          onOpen={open}
          onArrive={() => {
            // New events show on the first page by themselves (at most one reload per second).
            if (cursor !== null || reload.current !== undefined) return;
            reload.current = window.setTimeout(() => {
              reload.current = undefined;
              load();
            }, 1000);
          }}
        />
      </div>
      {openEvent && <EventDetail id={openEvent} focusToken={focusToken} onClose={() => setOpenEvent(null)} />}
    </div>
  );
}
