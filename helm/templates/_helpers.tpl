{{/* Chart name. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release full name. */}}
{{- define "herald.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "herald.labels" -}}
app.kubernetes.io/name: {{ include "herald.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "herald.metaLabels" . }}
{{- end }}

{{/* Labels besides name and instance. */}}
{{- define "herald.metaLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: herald
{{- end }}

{{/* Selector labels of one role's pods: (dict "ctx" $ "role" "api"). */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.secretName" -}}
{{- default (include "herald.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The pod template of one role: (dict "ctx" $ "role" "all" "resources" {...}).
Embedded mode passes role "all" and mounts the PVC named "data".
*/}}
{{- define "herald.podTemplate" -}}
{{- $ := .ctx -}}
metadata:
  labels:
    {{- include "herald.selectorLabels" . | nindent 4 }}
    {{- include "herald.metaLabels" $ | nindent 4 }}
    {{- with $.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") $ | sha256sum }}
    {{- with $.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "herald.serviceAccountName" $ }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $.Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml $.Values.podSecurityContext | nindent 4 }}
  {{- with $.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: herald
      image: {{ include "herald.image" $ | quote }}
      imagePullPolicy: {{ $.Values.image.pullPolicy }}
      args: ["serve"]
      env:
        - name: HERALD_ROLE
          value: {{ .role | quote }}
        {{- if eq .role "relay" }}
        # The relay's stable name (its Kafka transactional id is
        # <prefix>-relay-<pod name>): the StatefulSet's pod name.
        - name: HERALD_RELAY_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if and (eq .role "worker") .ctx.Values.roles.worker.stableId }}
        # The pod's name as the worker's stable name (--worker-id): a
        # container restarted in its pod takes its partitions back at once.
        - name: HERALD_WORKER_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        - name: HERALD_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ include "herald.secretName" $ }}
              key: admin-token
        {{- if or $.Values.secrets.encryptionKey $.Values.secrets.existingSecret }}
        - name: HERALD_SECRET_ENCRYPTION_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "herald.secretName" $ }}
              key: secret-encryption-key
              optional: true
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "herald.fullname" $ }}
      ports:
        - name: http
          containerPort: {{ $.Values.port }}
          protocol: TCP
      livenessProbe:
        httpGet:
          path: {{ $.Values.probes.liveness.path }}
          port: http
        initialDelaySeconds: {{ $.Values.probes.liveness.initialDelaySeconds }}
        periodSeconds: {{ $.Values.probes.liveness.periodSeconds }}
        failureThreshold: {{ $.Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: {{ $.Values.probes.readiness.path }}
          port: http
        initialDelaySeconds: {{ $.Values.probes.readiness.initialDelaySeconds }}
        periodSeconds: {{ $.Values.probes.readiness.periodSeconds }}
        failureThreshold: {{ $.Values.probes.readiness.failureThreshold }}
      resources:
        {{- toYaml .resources | nindent 8 }}
      securityContext:
        {{- toYaml $.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /var/lib/herald
        - name: tmp
          mountPath: /tmp
  volumes:
    {{- if ne .role "all" }}
    - name: data
      emptyDir: {}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
  {{- with $.Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $.Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The roles this release runs. */}}
{{- define "herald.roles" -}}
{{- if eq .Values.mode "embedded" }}all{{ else }}api relay worker{{ end }}
{{- end }}
