{{- define "hubsentry.name" -}}{{ .Release.Name }}-hubsentry{{- end -}}
{{- define "hubsentry.labels" -}}
app.kubernetes.io/name: hubsentry
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}
{{- define "hubsentry.selector" -}}
app.kubernetes.io/name: hubsentry
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
