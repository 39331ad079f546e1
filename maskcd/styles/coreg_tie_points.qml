<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<!-- maskcd co-registration tie points: green circles = used in the fit, red crosses = rejected or not significant;
     the circle grows with the reliability (0-1). -->
<qgis version="3.22.16-Białowieża" styleCategories="Symbology|Labeling|Fields|Rendering">
  <renderer-v2 type="RuleRenderer" symbollevels="0" forceraster="0" enableorderby="0" referencescale="-1">
    <rules key="{7b0d6a3e-2c1f-4d1e-9a3b-000000000000}">
      <rule key="{7b0d6a3e-2c1f-4d1e-9a3b-000000000001}" filter="&quot;used&quot;" symbol="0" label="used in the fit"/>
      <rule key="{7b0d6a3e-2c1f-4d1e-9a3b-000000000002}" filter="NOT &quot;used&quot;" symbol="1" label="rejected / not significant"/>
    </rules>
    <symbols>
      <symbol type="marker" name="0" alpha="0.9" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleMarker" enabled="1" locked="0" pass="0">
          <prop k="name" v="circle"/>
          <prop k="color" v="26,150,65,255"/>
          <prop k="outline_color" v="0,0,0,255"/>
          <prop k="outline_width" v="0.2"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="size" v="2.6"/>
          <prop k="size_unit" v="MM"/>
          <data_defined_properties>
            <Option type="Map">
              <Option type="QString" name="name" value=""/>
              <Option type="Map" name="properties">
                <Option type="Map" name="size">
                  <Option type="bool" name="active" value="true"/>
                  <Option type="QString" name="expression" value="1.5 + 2.5 * coalesce(&quot;reliability&quot;, 0)"/>
                  <Option type="int" name="type" value="3"/>
                </Option>
              </Option>
              <Option type="QString" name="type" value="collection"/>
            </Option>
          </data_defined_properties>
        </layer>
      </symbol>
      <symbol type="marker" name="1" alpha="0.9" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleMarker" enabled="1" locked="0" pass="0">
          <prop k="name" v="cross2"/>
          <prop k="color" v="215,25,28,255"/>
          <prop k="outline_color" v="215,25,28,255"/>
          <prop k="outline_width" v="0.4"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="size" v="2.4"/>
          <prop k="size_unit" v="MM"/>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <layerGeometryType>0</layerGeometryType>
</qgis>
