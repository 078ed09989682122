{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "imagegate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Truncated to 52 characters so that suffixes such as "-migrate" or
"-worker" still fit in 63.
*/}}
{{- define "imagegate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "imagegate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "imagegate.labels" -}}
helm.sh/chart: {{ include "imagegate.chart" . }}
{{ include "imagegate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: imagegate
{{- end }}

{{/*
Selector labels (without component).
*/}}
{{- define "imagegate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imagegate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Resource names of the components.
*/}}
{{- define "imagegate.api.fullname" -}}
{{- printf "%s-api" (include "imagegate.fullname" .) }}
{{- end }}

{{- define "imagegate.worker.fullname" -}}
{{- printf "%s-worker" (include "imagegate.fullname" .) }}
{{- end }}

{{- define "imagegate.migrate.fullname" -}}
{{- printf "%s-migrate" (include "imagegate.fullname" .) }}
{{- end }}

{{/*
The container image.
*/}}
{{- define "imagegate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret that holds IMAGEGATE_DATABASE_URL, IMAGEGATE_REDIS_URL and IMAGEGATE_SECRET_KEY.
*/}}
{{- define "imagegate.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else }}
{{- include "imagegate.fullname" . }}
{{- end }}
{{- end }}

{{/*
The secret key: the value given, else the one already stored in the release's Secret, else a
new random one.
*/}}
{{- define "imagegate.secretKey" -}}
{{- if .Values.secret.secretKey }}
{{- .Values.secret.secretKey }}
{{- else }}
{{- $current := lookup "v1" "Secret" .Release.Namespace (include "imagegate.fullname" .) }}
{{- if and $current $current.data (hasKey $current.data "IMAGEGATE_SECRET_KEY") }}
{{- index $current.data "IMAGEGATE_SECRET_KEY" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the PersistentVolumeClaim mounted on /data.
*/}}
{{- define "imagegate.claimName" -}}
{{- if .Values.persistence.existingClaim }}
{{- .Values.persistence.existingClaim }}
{{- else }}
{{- printf "%s-data" (include "imagegate.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Pod annotations that roll the pods when the configuration changes.
*/}}
{{- define "imagegate.configChecksums" -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ pick .Values.secret "existingSecret" "databaseUrl" "redisUrl" "secretKey" | toJson | sha256sum }}
{{- end }}

{{/*
Environment of the gateway's containers: the ConfigMap, the Secret, then extraEnv.
*/}}
{{- define "imagegate.envFrom" -}}
- configMapRef:
    name: {{ include "imagegate.fullname" . }}
- secretRef:
    name: {{ include "imagegate.secretName" . }}
{{- end }}

{{/*
Volumes shared by the API and worker pods.
*/}}
{{- define "imagegate.volumes" -}}
- name: data
{{- if .Values.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "imagegate.claimName" . }}
{{- else }}
  emptyDir: {}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "imagegate.volumeMounts" -}}
- name: data
  mountPath: /data
- name: tmp
  mountPath: /tmp
{{- end }}

{{/*
Pod-level settings shared by every pod of the chart.
*/}}
{{- define "imagegate.podSpecCommon" -}}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
