import { useEffect, useState } from 'preact/hooks';
import { api, Attempt, fmtTime, Page, qs, Subscription } from './api';
import { Routing, RoutingFields, routingBody } from './routing';
import { KafkaFields, KafkaForm, isKafka, kafkaBody, kafkaForm } from './kafka';
import { EndpointFields, EndpointForm, endpointBody, endpointForm } from './endpoint';

function errText(e: unknown): string {
  return (e as Error).message;
}

function splitTypes(s: string): string[] {
  return s.split(',').map((t) => t.trim()).filter(Boolean);
}

/// A secret held in memory only, masked until the user asks to see it.
function Secret({ value, label }: { value: string; label: string }) {
  const [shown, setShown] = useState(false);
  return (
    <div class="secret">
      <span>{label}: </span>
      <code data-testid="secret-value">{shown ? value : '•'.repeat(24)}</code>{' '}
      <button type="button" onClick={() => setShown(!shown)} aria-pressed={shown}>
        {shown ? 'Hide secret' : 'Reveal secret'}
      </button>
      {shown && (
        <button type="button" onClick={() => navigator.clipboard?.writeText(value)}>
          Copy
        </button>
      )}
      <p class="hint">Shown now only: Herald does not show it again. Store it in your receiver's configuration.</p>
    </div>
  );
}

function CreateForm({ onCreated }: { onCreated: (s: Subscription) => void }) {
  const [url, setUrl] = useState('');
  const [types, setTypes] = useState('*');
  const [description, setDescription] = useState('');
  const [routing, setRouting] = useState<Routing>({ filter: '', payload: 'full' });
  const [kafka, setKafka] = useState<KafkaForm>(kafkaForm());
  const [endpoint, setEndpoint] = useState<EndpointForm>(endpointForm());
  const [error, setError] = useState<string | null>(null);
  async function submit(e: Event) {
    e.preventDefault();
    setError(null);
    try {
      const body: any = { url: url.trim(), event_types: splitTypes(types), ...routingBody(routing) };
      if (description.trim()) body.description = description.trim();
      const settings = isKafka(url) ? kafkaBody(kafka) : null;
      if (settings) body.kafka = settings;
      if (!isKafka(url)) {
        const { auth, tls } = endpointBody(endpoint, url);
        if (auth) body.auth = auth;
        if (tls) body.tls = tls;
      }
      const s = await api<Subscription>('POST', '/portal/webhooks/subscribe', body);
      setUrl('');
      setDescription('');
      setRouting({ filter: '', payload: 'full' });
      setKafka(kafkaForm());
      setEndpoint(endpointForm());
      onCreated(s);
    } catch (err) {
      setError(errText(err));
    }
  }
  return (
    <form class="card grid" onSubmit={submit} aria-labelledby="create-title">
      <h3 id="create-title">New subscription</h3>
      <label for="new-url">Endpoint URL</label>
      <input id="new-url" type="url" required placeholder="https://example.com/hooks or kafka://broker:9092/topic" value={url} onInput={(e) => setUrl((e.target as HTMLInputElement).value)} />
      {isKafka(url) && <KafkaFields id="new" value={kafka} onChange={setKafka} />}
      {url.trim() && !isKafka(url) && <EndpointFields id="new" url={url} value={endpoint} onChange={setEndpoint} />}
      <label for="new-types">Event types (comma-separated; <code>prefix.*</code> or <code>*</code>)</label>
      <input id="new-types" required value={types} onInput={(e) => setTypes((e.target as HTMLInputElement).value)} />
      <label for="new-description">Description</label>
      <input id="new-description" value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
      <RoutingFields id="new" value={routing} onChange={setRouting} />
      <div><button type="submit">Create subscription</button></div>
      {error && <p class="error" role="alert">{error}</p>}
    </form>
  );
}

function Health({ sub, last }: { sub: Subscription; last: Attempt | null | undefined }) {
  return (
    <dl class="facts" aria-label="Health">
      <dt>Status</dt>
      <dd>
        <span class={`badge ${sub.status}`} data-testid="sub-status">{sub.status}</span>
      </dd>
      {sub.disabled_reason && (
        <>
          <dt>Disabled because</dt>
          <dd>{sub.disabled_reason}</dd>
        </>
      )}
      {sub.failing_since && (
        <>
          <dt>Failing since</dt>
          <dd>{fmtTime(sub.failing_since as string)}</dd>
        </>
      )}
      <dt>Last attempt</dt>
      <dd>
        {last === undefined
          ? '…'
          : last === null
            ? 'none yet'
            : `${last.outcome}${last.status_code ? ` (HTTP ${last.status_code})` : ''}${last.error ? `, ${last.error}` : ''} at ${fmtTime(last.created_at)}`}
      </dd>
      <dt>Circuit</dt>
      <dd>
        {last?.error === 'circuit_open'
          ? 'open: Herald is holding deliveries back until the endpoint answers again'
          : last
            ? 'closed (as of the last attempt)'
            : 'no attempts yet'}
      </dd>
      <dt>Old secret valid until</dt>
      <dd data-testid="grace">{sub.previous_secret_expires_at ? `${fmtTime(sub.previous_secret_expires_at)} (${graceLeft(sub.previous_secret_expires_at)})` : 'no previous secret'}</dd>
    </dl>
  );
}

function graceLeft(until: string): string {
  const ms = new Date(until).getTime() - Date.now();
  if (ms <= 0) return 'expired';
  const m = Math.round(ms / 60000);
  return m >= 120 ? `${Math.round(m / 60)} h left` : `${m} min left`;
}

function Recover({ sub }: { sub: Subscription }) {
  const now = new Date();
  const local = (d: Date) => new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  const [since, setSince] = useState(local(new Date(now.getTime() - 3600_000)));
  const [until, setUntil] = useState(local(new Date(now.getTime() + 60_000)));
  const [onlyFailed, setOnlyFailed] = useState(false);
  const [job, setJob] = useState<any>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    if (!job || job.status === 'completed') return;
    const t = setTimeout(async () => {
      try {
        setJob(await api('GET', `/portal/recoveries/${job.id}`));
      } catch (err) {
        setError(errText(err));
      }
    }, 500);
    return () => clearTimeout(t);
  }, [job]);

  async function start(e: Event) {
    e.preventDefault();
    setError(null);
    try {
      setJob(
        await api('POST', `/portal/webhooks/${sub.id}/recover`, {
          since: new Date(since).toISOString(),
          until: new Date(until).toISOString(),
          only_failed: onlyFailed,
        }),
      );
    } catch (err) {
      setError(errText(err));
    }
  }
  const id = sub.id;
  return (
    <form class="grid" onSubmit={start} aria-labelledby={`recover-${id}`}>
      <h4 id={`recover-${id}`}>Recover a time range</h4>
      <label for={`since-${id}`}>From (received at or after)</label>
      <input id={`since-${id}`} type="datetime-local" required value={since} onInput={(e) => setSince((e.target as HTMLInputElement).value)} />
      <label for={`until-${id}`}>Until (before)</label>
      <input id={`until-${id}`} type="datetime-local" required value={until} onInput={(e) => setUntil((e.target as HTMLInputElement).value)} />
      <label class="check">
        <input type="checkbox" checked={onlyFailed} onChange={(e) => setOnlyFailed((e.target as HTMLInputElement).checked)} /> Only events whose last delivery failed
      </label>
      <div><button type="submit">Start recovery</button></div>
      {error && <p class="error" role="alert">{error}</p>}
      {job && (
        <div role="status" aria-live="polite" data-testid="recovery">
          <progress max={Math.max(job.total, 1)} value={job.done} aria-label="Recovery progress" />{' '}
          Recovery {job.status}: {job.done} of {job.total} done ({job.scheduled} scheduled)
        </div>
      )}
    </form>
  );
}

function Detail({ sub, onChanged, onDeleted, onOpenEvent }: { sub: Subscription; onChanged: (s: Subscription) => void; onDeleted: () => void; onOpenEvent: (id: string) => void }) {
  const [url, setUrl] = useState(sub.url);
  const [types, setTypes] = useState(sub.event_types.join(', '));
  const [description, setDescription] = useState(sub.description ?? '');
  const [routing, setRouting] = useState<Routing>({ filter: sub.filter ?? '', payload: sub.payload ?? 'full' });
  const [kafka, setKafka] = useState<KafkaForm>(kafkaForm(sub.kafka));
  const [endpoint, setEndpoint] = useState<EndpointForm>(endpointForm(sub.auth, sub.tls));
  const [grace, setGrace] = useState(86400);
  const [secret, setSecret] = useState<string | null>(sub.secret ?? null);
  const [error, setError] = useState<string | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [last, setLast] = useState<Attempt | null | undefined>(undefined);
  const [recent, setRecent] = useState<Attempt[]>([]);

  useEffect(() => {
    setUrl(sub.url);
    setTypes(sub.event_types.join(', '));
    setDescription(sub.description ?? '');
    setRouting({ filter: sub.filter ?? '', payload: sub.payload ?? 'full' });
    setKafka(kafkaForm(sub.kafka));
    setEndpoint(endpointForm(sub.auth, sub.tls));
    api<Page<Attempt>>('GET', `/integrations/webhooks${qs({ subscription_id: sub.id, limit: 10 })}`)
      .then((p) => {
        setLast(p.data[0] ?? null);
        setRecent(p.data);
      })
      .catch(() => setLast(null));
  }, [sub.id, sub.updated_at]);

  async function act(what: string, fn: () => Promise<void>) {
    setError(null);
    setNotice(null);
    try {
      await fn();
      setNotice(what);
    } catch (err) {
      setError(errText(err));
    }
  }
  const save = (e: Event) => {
    e.preventDefault();
    act('Saved.', async () => {
      onChanged(
        await api('PATCH', `/portal/webhooks/${sub.id}`, {
          url: url.trim(),
          event_types: splitTypes(types),
          description: description.trim() ? description.trim() : null,
          ...routingBody(routing),
          // Changed settings replace the stored ones (a SASL password is typed again).
          ...(isKafka(url) && kafka.touched ? { kafka: kafkaBody(kafka) } : {}),
          // Likewise the endpoint's credentials (their secret is typed again).
          ...(!isKafka(url) && endpoint.touched ? endpointBody(endpoint, url) : {}),
        }),
      );
    });
  };
  const rotate = (e: Event) => {
    e.preventDefault();
    act('Secret rotated.', async () => {
      const r = await api('POST', `/portal/webhooks/${sub.id}/rotate-secret`, { grace_period_seconds: grace });
      setSecret(r.secret);
      onChanged(await api('GET', `/portal/webhooks/${sub.id}`));
    });
  };
  const id = sub.id;
  return (
    <section class="card" aria-labelledby={`detail-${id}`} data-testid="sub-detail">
      <h3 id={`detail-${id}`}>
        Subscription <code>{id}</code>
      </h3>
      <Health sub={sub} last={last} />
      <div class="row">
        {sub.status === 'active' ? (
          <button onClick={() => act('Paused.', async () => onChanged(await api('POST', `/portal/webhooks/${id}/pause`)))}>Pause</button>
        ) : (
          <button onClick={() => act('Resumed.', async () => onChanged(await api('POST', `/portal/webhooks/${id}/resume`)))}>Resume</button>
        )}
        <button
          class="danger"
          onClick={() => {
            if (confirm(`Delete subscription ${id}? Its pending deliveries are dropped.`))
              act('Deleted.', async () => {
                await api('DELETE', `/portal/webhooks/${id}`);
                onDeleted();
              });
          }}
        >
          Delete
        </button>
      </div>
      {notice && <p role="status" class="notice">{notice}</p>}
      {error && <p role="alert" class="error">{error}</p>}
      {secret && <Secret value={secret} label="Signing secret" />}
      <form class="grid" onSubmit={save} aria-labelledby={`edit-${id}`}>
        <h4 id={`edit-${id}`}>Edit</h4>
        <label for={`url-${id}`}>Endpoint URL</label>
        <input id={`url-${id}`} type="url" required value={url} onInput={(e) => setUrl((e.target as HTMLInputElement).value)} />
        {isKafka(url) && <KafkaFields id={id} value={kafka} onChange={setKafka} />}
        {!isKafka(url) && <EndpointFields id={id} url={url} value={endpoint} onChange={setEndpoint} />}
        <label for={`types-${id}`}>Event types</label>
        <input id={`types-${id}`} required value={types} onInput={(e) => setTypes((e.target as HTMLInputElement).value)} />
        <label for={`desc-${id}`}>Description</label>
        <input id={`desc-${id}`} value={description} onInput={(e) => setDescription((e.target as HTMLInputElement).value)} />
        <RoutingFields id={id} value={routing} onChange={setRouting} />
        <div><button type="submit">Save changes</button></div>
      </form>
      <form class="grid" onSubmit={rotate} aria-labelledby={`rotate-${id}`}>
        <h4 id={`rotate-${id}`}>Rotate the signing secret</h4>
        <label for={`grace-${id}`}>Grace window for the old secret (seconds; 0 stops it at once)</label>
        <input id={`grace-${id}`} type="number" min={0} required value={grace} onInput={(e) => setGrace(Number((e.target as HTMLInputElement).value))} />
        <div><button type="submit">Rotate secret</button></div>
      </form>
      <Recover sub={sub} />
      <h4>Recent attempts</h4>
      {recent.length === 0 ? (
        <p>No delivery attempts yet.</p>
      ) : (
        <ul class="plain">
          {recent.map((a) => (
            <li key={a.id}>
              <button class="link" onClick={() => onOpenEvent(a.event_id)}>
                {a.event_id}
              </button>{' '}
              <span class={`badge ${a.outcome}`}>{a.outcome}</span> {a.status_code ?? a.error ?? ''} · {fmtTime(a.created_at)}
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

export function Subscriptions({ onOpenEvent }: { onOpenEvent: (id: string) => void }) {
  const [subs, setSubs] = useState<Subscription[] | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [next, setNext] = useState<string | null>(null);
  const [selected, setSelected] = useState<Subscription | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function load(c: string | null = cursor) {
    try {
      const p = await api<Page<Subscription>>('GET', `/portal/webhooks${qs({ limit: 20, cursor: c })}`);
      setSubs(p.data);
      setNext(p.next_cursor);
    } catch (err) {
      setError(errText(err));
    }
  }
  useEffect(() => {
    load();
  }, [cursor]);

  return (
    <div class="split">
      <section aria-labelledby="subs-title">
        <h2 id="subs-title">Subscriptions</h2>
        {error && <p class="error" role="alert">{error}</p>}
        {subs === null ? (
          <p>Loading…</p>
        ) : subs.length === 0 ? (
          <p>No subscriptions yet.</p>
        ) : (
          <table data-testid="subs-table">
            <caption class="sr-only">Your subscriptions</caption>
            <thead>
              <tr>
                <th scope="col">Endpoint</th>
                <th scope="col">Types</th>
                <th scope="col">Status</th>
              </tr>
            </thead>
            <tbody>
              {subs.map((s) => (
                <tr key={s.id} class={selected?.id === s.id ? 'selected' : ''}>
                  <td>
                    <button class="link" aria-label={`Open subscription ${s.id} to ${s.url}`} onClick={() => setSelected(s)}>
                      {s.url}
                    </button>
                    <div class="muted small">{s.id}</div>
                  </td>
                  <td>{s.event_types.join(', ')}</td>
                  <td>
                    <span class={`badge ${s.status}`}>{s.status}</span>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <div class="row">
          {cursor && <button onClick={() => setCursor(null)}>First page</button>}
          {next && <button onClick={() => setCursor(next)}>Next page</button>}
        </div>
        <CreateForm
          onCreated={(s) => {
            setSelected(s);
            load(null);
          }}
        />
      </section>
      {selected && (
        <Detail
          key={selected.id}
          sub={selected}
          onOpenEvent={onOpenEvent}
          onChanged={(s) => {
            setSelected({ ...s, secret: selected.secret });
            load();
          }}
          onDeleted={() => {
            setSelected(null);
            load();
          }}
        />
      )}
    </div>
  );
}
