import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, fmtTime, Page, qs } from './api';

export type AuditRecord = {
  id: string;
  tenant_id: string;
  at: string;
  actor: { kind: 'api_key' | 'admin' | 'herald'; id?: string };
  action: string;
  subscription_id?: string;
  target?: string;
  details: Record<string, unknown>;
};

const ACTIONS = [
  'subscription.created',
  'subscription.updated',
  'subscription.paused',
  'subscription.resumed',
  'subscription.disabled',
  'subscription.secret_rotated',
  'subscription.deleted',
  'api_key.created',
  'api_key.revoked',
  'recovery.requested',
  'replay.requested',
  'event_type.registered',
  'tenant.quotas_set',
];

function actor(a: AuditRecord['actor']): string {
  if (a.kind === 'api_key') return `API key ${a.id ?? ''}`;
  return a.kind === 'admin' ? 'Admin token' : 'Herald';
}

/// The tenant's audit trail: who changed what, newest first (needs a key
/// with the `admin` scope).
export function Audit() {
  const [action, setAction] = useState('');
  const [cursors, setCursors] = useState<(string | null)[]>([null]);
  const [page, setPage] = useState<Page<AuditRecord> | null>(null);
  const [error, setError] = useState<string | null>(null);
  const cursor = cursors[cursors.length - 1];

  async function load() {
    try {
      setPage(await api('GET', `/portal/audit${qs({ action, limit: 20, cursor })}`));
      setError(null);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 403 ? 'The audit trail needs a key with the admin scope.' : (err as Error).message);
    }
  }
  useEffect(() => {
    load();
  }, [action, cursor]);

  return (
    <section aria-labelledby="audit-title">
      <h2 id="audit-title">Audit trail</h2>
      <div class="row">
        <label for="audit-action">Action</label>
        <select
          id="audit-action"
          value={action}
          onChange={(e) => {
            setCursors([null]);
            setAction((e.target as HTMLSelectElement).value);
          }}
        >
          <option value="">all</option>
          {ACTIONS.map((a) => (
            <option key={a} value={a}>
              {a}
            </option>
          ))}
        </select>
        <button type="button" onClick={load}>
          Refresh
        </button>
      </div>
      {error && <p class="error" role="alert">{error}</p>}
      {page && page.data.length === 0 && <p>No changes recorded{action ? ` of kind ${action}` : ''}.</p>}
      {page && page.data.length > 0 && (
        <table data-testid="audit-list">
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Action</th>
              <th scope="col">By</th>
              <th scope="col">Resource</th>
              <th scope="col">Details</th>
            </tr>
          </thead>
          <tbody>
            {page.data.map((r) => (
              <tr key={r.id}>
                <td>{fmtTime(r.at)}</td>
                <td>{r.action}</td>
                <td>{actor(r.actor)}</td>
                <td>
                  <code class="small">{r.subscription_id ?? r.target ?? '—'}</code>
                </td>
                <td>
                  <code class="small">{Object.keys(r.details ?? {}).length ? JSON.stringify(r.details) : ''}</code>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <div class="row">
        {cursors.length > 1 && <button onClick={() => setCursors(cursors.slice(0, -1))}>Previous page</button>}
        {page?.next_cursor && <button onClick={() => setCursors([...cursors, page.next_cursor])}>Next page</button>}
      </div>
    </section>
  );
}
